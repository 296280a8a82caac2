"""A heatmap whose colours can be made in a display thread.

pyqtgraph's ImageItem maps a float image through its lookup table when it paints (~2.4 ms for a
620 × 557 tile with NaNs, on the GUI thread, every step). `prepare` does the same mapping with pyqtgraph's
own function where the tile is computed; `PreparedImageItem.show` takes the float image (kept as `.image`,
for tooltips, exports and tests) together with those colours, and paints without mapping again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from pyqtgraph import functions_qimage
from PySide6.QtGui import QImage


@dataclass(frozen=True)
class Prepared:
    image: np.ndarray  # what is shown, float32 [rows, cols] with NaN where transparent
    levels: tuple[float, float]
    lut: np.ndarray  # the lookup table it was coloured with
    qimage: QImage | None  # None: pyqtgraph had no fast path; the item maps it when it paints


def prepare(image: np.ndarray, levels: tuple[float, float], lut: np.ndarray) -> Prepared:
    """The colours ImageItem.render would make for `image` (row-major), made here (any thread: QImage is
    not a QPixmap)."""
    nans = image.dtype.kind == "f" and bool(np.isnan(image.min()))
    where = np.isnan(image).nonzero() if nans else None
    qimage = functions_qimage.try_make_qimage(image, levels=levels, lut=lut, transparentLocations=where)
    return Prepared(image, levels, lut, qimage)


class PreparedImageItem(pg.ImageItem):
    """An ImageItem (row-major) that can be given its colours with its data."""

    def __init__(self) -> None:
        super().__init__(axisOrder="row-major")
        self._prepared: Prepared | None = None
        self._prepared_for: np.ndarray | None = None

    def show(self, prepared: Prepared) -> None:
        self.setImage(prepared.image, autoLevels=False, levels=prepared.levels)
        usable = (prepared.qimage is not None and self.lut is not None and not callable(self.lut)
                  and (self.lut is prepared.lut or np.array_equal(self.lut, prepared.lut)))
        # the image as the item keeps it (setImage may store a converted copy): render() checks it is still that
        self._prepared, self._prepared_for = (prepared, self.image) if usable else (None, None)
        if usable:
            # the colours are made: take them now. Left to the next paint, `qimage` stayed the previous image's
            # (another size after a step) until the view painted, while `image` was already the new one
            self.render()

    def setImage(self, image=None, autoLevels=None, **kargs) -> None:  # noqa: ANN001, N802, N803 - pyqtgraph API
        self._prepared = None  # any other image is mapped by pyqtgraph as usual
        super().setImage(image, autoLevels, **kargs)

    def setLookupTable(self, lut, update=True) -> None:  # noqa: ANN001, N802 - pyqtgraph API
        self._prepared = None
        super().setLookupTable(lut, update)

    def render(self) -> None:
        p = self._prepared
        if p is not None and self.image is self._prepared_for and self.levels is not None and tuple(self.levels) == tuple(p.levels):
            self.qimage = p.qimage
            self._renderRequired = False
            self._unrenderable = False
            return
        super().render()
