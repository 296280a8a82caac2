"""Turning a row of logits into probabilities and a choice: temperature, top-k, top-p, seeded sampling.

Pure numpy, so the GUI can re-colour a distribution after a settings change without touching the model.
"""

from __future__ import annotations

import numbers
import operator
from dataclasses import dataclass

import numpy as np

from .errors import SamplingError


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or t != t or t < 0 or (t == 0 and not self.greedy):
            raise SamplingError(
                f"temperature must be a number > 0 for sampling (got {t!r}); use greedy decoding for a deterministic choice"
            )
        if self.top_k is not None:
            ok = isinstance(self.top_k, numbers.Real) and not isinstance(self.top_k, bool) and float(self.top_k).is_integer()
            k = int(self.top_k) if ok else 0
            if k < 1:
                raise SamplingError(f"top-k must be a whole number >= 1, or None for no limit (got {self.top_k!r})")
            object.__setattr__(self, "top_k", k)
        if self.top_p is not None and (not isinstance(self.top_p, numbers.Real) or not 0.0 < self.top_p <= 1.0):
            raise SamplingError(f"top-p must be a number in (0, 1], or None for no limit (got {self.top_p!r})")
        try:
            seed = operator.index(self.seed)
        except TypeError:
            seed = -1
        if seed < 0:
            raise SamplingError(f"the seed must be a whole number >= 0 (got {self.seed!r})")


def distribution(
    logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> np.ndarray:
    """Probabilities (float32, sums to 1) after temperature, then top-k and top-p filtering."""
    x = np.asarray(logits, dtype=np.float64)
    if temperature <= 0:  # the limit of softmax(x / t) as t -> 0: all mass on the argmax
        probs = np.zeros_like(x)
        probs[int(np.argmax(x))] = 1.0
        return probs.astype(np.float32)
    with np.errstate(over="ignore"):  # shift first, so a tiny temperature sends the rest to -inf, not NaN
        x = (x - x.max()) / temperature
    keep = np.ones(x.shape, dtype=bool)
    if top_k is not None and top_k < x.size:
        kth = np.partition(x, -top_k)[-top_k]
        keep &= x >= kth
    z = np.where(keep, x, -np.inf)
    z = np.exp(z - z.max())
    probs = z / z.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p (always at least the best token)
        n_keep = int(np.searchsorted(cumulative, top_p, side="left")) + 1
        mask = np.zeros_like(keep)
        mask[order[:n_keep]] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return probs.astype(np.float32)


def choose(logits: np.ndarray, settings: SamplingSettings, position: int) -> tuple[int, np.ndarray]:
    """Pick a token for `position`. Sampling is seeded by (seed, position), so back() + step() repeats."""
    probs = distribution(logits, settings.temperature, settings.top_k, settings.top_p)
    if settings.greedy:
        return int(np.argmax(logits)), probs
    rng = np.random.default_rng([settings.seed, position])
    p = probs.astype(np.float64)
    return int(rng.choice(p.size, p=p / p.sum())), probs
