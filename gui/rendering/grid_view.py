"""Geometry of the head grid when it is zoomed and scrolled: how many screen pixels a cell gets, which part of
the grid is visible, how fine its thumbnails are, and which layer/head numbers are written. Plain numbers, so
the rules can be tested without a window (gui/panels/grid_navigation.py applies them to the view).

Coordinates are cells: cell (layer, head) spans x ∈ [head, head + 1), y ∈ [layer, layer + 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

READABLE_PX = 20.0  # a thumbnail's shape is easy to make out (and to hit with the mouse) from this size
SMALL_PX = 14.0  # below this the first view gives the heads of a layer the width rather than show every layer
MAX_CELL_PX = 240.0  # zoomed in as far as one head filling a small dock
ATLAS_PIXELS = 8_000_000  # the largest atlas the grid resamples (a 64 × 64-head grid at ~43 px per thumbnail)
TIGHT_PX = 6.0  # cells smaller than this on screen are drawn without a gap between them
LABEL_STEPS = (1, 2, 5, 10, 20, 50, 100)  # layer/head numbers are written every this many cells


def fit_all_px(width: float, height: float, n_layers: int, n_heads: int) -> float:
    """Pixels per cell that show every cell."""
    return max(min(width / max(n_heads, 1), height / max(n_layers, 1)), 1.0)


def auto_px(width: float, height: float, n_layers: int, n_heads: int) -> float:
    """The first view of a model: everything, unless that makes cells small (< SMALL_PX) and the heads of one
    layer fit across at SMALL_PX or more: then the width (the layers scroll). 12 × 12 heads in a small dock stay
    whole (as the grid always showed them, at the same cost per step); 28 × 16 get the width."""
    every = fit_all_px(width, height, n_layers, n_heads)
    across = width / max(n_heads, 1)
    return across if every < SMALL_PX <= across else every


def clamp_origin(origin: float, visible: float, n_cells: int) -> float:
    """The first visible cell coordinate along one axis: the grid never scrolls past its ends, and a grid
    smaller than the view is centred."""
    if visible >= n_cells:
        return (n_cells - visible) / 2
    return min(max(origin, 0.0), n_cells - visible)


def label_step(cell_px: float, min_px: float) -> int:
    """Write every `step`-th number (a round step: 1, 2, 5, 10, 20 …) so neighbours are ≥ min_px apart."""
    need = min_px / max(cell_px, 1e-6)
    return next((s for s in LABEL_STEPS if s >= need), LABEL_STEPS[-1])


def thumb_size(cell_px: float, n_layers: int, n_heads: int, lo: int, hi: int) -> tuple[int, int]:
    """(thumbnail size, gap) in atlas pixels: about one atlas pixel per screen pixel of the cell (so the gaps
    neither vanish nor alias), within [lo, hi], and small enough that the whole atlas stays within ATLAS_PIXELS.
    Cells under TIGHT_PX on screen get no gap and may be smaller than lo: a 1-pixel gap in a 2-pixel cell would
    alias into stripes."""
    gap = 0 if cell_px < TIGHT_PX else 1
    lo = 1 if gap == 0 else lo
    budget = int(math.sqrt(ATLAS_PIXELS / max(n_layers * n_heads, 1))) - gap
    return int(min(max(int(cell_px) - gap, lo), hi, max(budget, lo))), gap


@dataclass(frozen=True)
class Viewport:
    """What part of an n_layers × n_heads grid is on screen at `px` pixels per cell."""

    x0: float  # first visible head coordinate (negative: the grid is narrower than the view, centred)
    y0: float  # first visible layer coordinate
    width: float  # visible cells across
    height: float  # visible cells down

    @classmethod
    def make(cls, x0: float, y0: float, px: float, screen_w: float, screen_h: float,
             n_layers: int, n_heads: int) -> Viewport:
        w, h = screen_w / px, screen_h / px
        return cls(clamp_origin(x0, w, n_heads), clamp_origin(y0, h, n_layers), w, h)

    def contains(self, layer: int, head: int) -> bool:
        return (self.x0 - 1e-6 <= head and head + 1 <= self.x0 + self.width + 1e-6
                and self.y0 - 1e-6 <= layer and layer + 1 <= self.y0 + self.height + 1e-6)

    def scrolled_to(self, layer: int, head: int) -> tuple[float, float]:
        """The origin that brings cell (layer, head) into view with the least scrolling."""
        x0, y0 = self.x0, self.y0
        if head < x0:
            x0 = head
        elif head + 1 > x0 + self.width:
            x0 = head + 1 - self.width
        if layer < y0:
            y0 = layer
        elif layer + 1 > y0 + self.height:
            y0 = layer + 1 - self.height
        return x0, y0
