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


STATISTICS = (
    Statistic("entropy", "entropy", " bits", "mean row entropy in bits (0 = each query looks at one key)"),
    Statistic("sink", "sink mass", "", "mean attention on the first token"),
    Statistic("prev_token", "previous token", "", "mean attention on the token just before the query"),
    Statistic("induction", "induction", "", "mean attention on the token after the previous occurrence of the "
                                            "query's token, on a repeated random sequence (main stack only)"),
    Statistic("distance", "mean distance", " tokens", "mean |query − key| weighted by attention"),
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


def colour_indices(values: np.ndarray, n_colors: int) -> tuple[np.ndarray, float, float]:
    """values [layers, heads] -> (int indices into a colour map of n_colors, -1 where NaN; the values that map
    to the first and the last colour). The scale runs from the smallest to the largest value shown, so heads
    that differ stand apart on any model (captions state the range: similar heads may look far apart)."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.full(values.shape, -1, dtype=np.int32), 0.0, 0.0
    lo, hi = float(values[finite].min()), float(values[finite].max())
    scale = (n_colors - 1) / (hi - lo) if hi > lo else 0.0
    idx = np.full(values.shape, -1, dtype=np.int32)
    # equal values (hi == lo) take the middle colour: nothing stands out
    idx[finite] = (np.clip(np.round((values[finite] - lo) * scale), 0, n_colors - 1) if scale
                   else (n_colors - 1) // 2)
    return idx, lo, hi


def format_value(key: str, value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.3f}{BY_KEY[key].unit}" if key in BY_KEY else f"{value:.3f}"
