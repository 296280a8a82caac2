"""Head statistics as colours: the names the GUI gives engine.analysis.HeadStat's fields, the rows turned into
one [layers, heads] array per kind and statistic, and a statistic's values turned into colour-map indices.

The numbers themselves come from the engine (engine.analysis.head_statistics, run in the worker); this only
arranges and scales them, so a grid of any size can show one colour per head."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Statistic:
    key: str  # the HeadStat field
    title: str  # what the menu and captions call it
    unit: str  # appended to values ("" for weights)
    tip: str
    scale: str  # "weight": 0..1 · "entropy": 0..log2(keys), uniform attention · "largest": 0..the largest shown


STATISTICS = (
    Statistic("entropy", "entropy", " bits", "mean row entropy in bits (0 = each query looks at one key)", "entropy"),
    Statistic("sink", "sink mass", "", "mean attention on the first token", "weight"),
    Statistic("prev_token", "previous token", "", "mean attention on the token just before the query", "weight"),
    Statistic("induction", "induction", "", "mean attention on the token after the previous occurrence of the "
                                            "query's token, on a repeated random sequence (main stack only)", "weight"),
    Statistic("distance", "mean distance", " tokens", "mean |query − key| weighted by attention", "largest"),
)
BY_KEY = {s.key: s for s in STATISTICS}


def statistic_arrays(stats: Iterable, n_layers: dict[str, int], n_heads: int) -> dict[str, dict[str, np.ndarray]]:
    """HeadStat rows -> {kind: {statistic key: float32 [layers, heads]}}; NaN where a head has no value
    (induction outside the main stack, a layer that was not captured)."""
    out = {kind: {s.key: np.full((n, n_heads), np.nan, dtype=np.float32) for s in STATISTICS}
           for kind, n in n_layers.items()}
    for st in stats:
        arrays = out.get(st.kind)
        if arrays is None or not (0 <= st.layer < n_layers[st.kind] and 0 <= st.head < n_heads):
            continue
        for key, array in arrays.items():
            array[st.layer, st.head] = float(getattr(st, key))
    return out


def statistic_scale(key: str, values: np.ndarray, n_keys: int) -> tuple[float, float]:
    """The values the darkest and the brightest colour stand for. Fixed where the statistic has a natural range
    (a weight: 0..1; entropy: 0..log2(keys), attention spread evenly over every key), so a model whose heads are
    all alike looks alike instead of having its noise stretched into contrast; else 0..the largest value shown."""
    kind = BY_KEY[key].scale
    if kind == "weight":
        return 0.0, 1.0
    if kind == "entropy":
        return 0.0, math.log2(max(n_keys, 2))
    finite = values[np.isfinite(values)]
    return 0.0, max(float(finite.max(initial=0.0)), 1e-9)


def colour_indices(values: np.ndarray, n_colors: int, lo: float, hi: float) -> np.ndarray:
    """values [layers, heads] -> int indices into a colour map of n_colors (lo -> 0, hi -> n_colors - 1,
    clipped); -1 where NaN."""
    finite = np.isfinite(values)
    idx = np.full(values.shape, -1, dtype=np.int32)
    scaled = (values[finite] - lo) / (hi - lo) if hi > lo else np.zeros(int(finite.sum()))
    idx[finite] = np.round(np.clip(scaled, 0.0, 1.0) * (n_colors - 1)).astype(np.int32)
    return idx


def format_value(key: str, value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.3f}{BY_KEY[key].unit}" if key in BY_KEY else f"{value:.3f}"
