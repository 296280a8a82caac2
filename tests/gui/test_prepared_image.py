"""Tiles coloured in the display thread (issue 20) paint exactly what pyqtgraph's own mapping paints."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import pytest

from gui.rendering import colormaps, display
from gui.rendering.prepared_image import PreparedImageItem, prepare


def _pixels(item: pg.ImageItem) -> bytes:
    item.render()
    q = item.qimage
    return bytes(q.constBits())[: q.sizeInBytes()], q.format(), q.width(), q.height()


@pytest.mark.parametrize("causal", [True, False])  # NaN above the diagonal (self-attention), or none (cross)
@pytest.mark.parametrize("log_scale", [False, True])
@pytest.mark.parametrize("cmap", ["viridis", "magma"])
def test_prepared_colours_equal_pyqtgraphs(qtbot, log_scale, cmap, causal):
    rng = np.random.default_rng(3)
    weights = rng.dirichlet(np.ones(57), size=41).astype(np.float32)
    img, levels = display.scaled(weights, log_scale)
    img = img.copy()
    if causal:
        img[display.future_mask(*img.shape)] = np.nan
    lut = colormaps.lookup_table(cmap)

    plain = pg.ImageItem(axisOrder="row-major")
    plain.setLookupTable(lut)
    plain.setImage(img, autoLevels=False, levels=levels)
    ours = PreparedImageItem()
    ours.setLookupTable(lut)
    ours.show(prepare(img, levels, lut))
    assert ours._prepared is not None  # the fast path is taken ...
    assert _pixels(ours) == _pixels(plain)  # ... and paints the same pixels
    np.testing.assert_array_equal(ours.image, img)  # the data stays what the view shows


def test_another_lookup_table_is_mapped_again(qtbot):
    img = np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)
    ours = PreparedImageItem()
    ours.setLookupTable(colormaps.lookup_table("viridis"))
    ours.show(prepare(img, (0.0, 1.0), colormaps.lookup_table("magma")))  # made for another colour map
    assert ours._prepared is None
    plain = pg.ImageItem(axisOrder="row-major")
    plain.setLookupTable(colormaps.lookup_table("viridis"))
    plain.setImage(img, autoLevels=False, levels=(0.0, 1.0))
    assert _pixels(ours) == _pixels(plain)


def test_shown_colours_are_the_items_at_once_not_at_the_next_paint(qtbot):
    """After a step the tile is one key wider: the item's QImage must be the new tile's as soon as it is shown
    (it stayed the old, narrower one until the view painted, so a reader saw the previous step's pixels)."""
    lut = colormaps.lookup_table("viridis")
    ours = PreparedImageItem()
    ours.setLookupTable(lut)
    old = np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)
    ours.show(prepare(old, (0.0, 1.0), lut))
    ours.render()  # the old tile painted
    new = np.linspace(1, 0, 35, dtype=np.float32).reshape(5, 7)
    new[display.future_mask(*new.shape)] = np.nan
    prepared = prepare(new, (0.0, 1.0), lut)
    ours.show(prepared)  # no paint in between
    assert ours._prepared is not None and not ours._renderRequired
    assert (ours.qimage.width(), ours.qimage.height()) == (7, 5)
    assert ours.qimage is prepared.qimage
    plain = pg.ImageItem(axisOrder="row-major")
    plain.setLookupTable(lut)
    plain.setImage(new, autoLevels=False, levels=(0.0, 1.0))
    plain.render()
    assert bytes(ours.qimage.constBits()) == bytes(plain.qimage.constBits())
