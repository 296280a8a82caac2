"""Colour maps for heatmaps and the head grid: pyqtgraph ColorMaps and their uint8 lookup tables (cached)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyqtgraph as pg

COLORMAPS = ("viridis", "inferno", "magma", "plasma", "cividis", "CET-L1", "CET-L3")


@lru_cache(maxsize=32)
def colormap(name: str) -> pg.ColorMap:
    cmap = pg.colormap.get(name)
    if name == "CET-L1":  # greys run white→black in CET-L1's reverse; black = strong attention reads better
        cmap.reverse()
    return cmap


@lru_cache(maxsize=32)
def lookup_table(name: str) -> np.ndarray:
    """uint8 [256, 3] colour table for ImageItem.setLookupTable."""
    return colormap(name).getLookupTable(0.0, 1.0, 256, alpha=False).astype(np.uint8)
