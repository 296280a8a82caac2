"""Render resources/icons/attention-inspector.svg to the PNG sizes of the freedesktop hicolor theme.

    QT_QPA_PLATFORM=offscreen .venv/bin/python tools/make_icons.py

Writes resources/icons/hicolor/<N>x<N>/apps/attention-inspector.png for N in SIZES, with Qt's own SVG
renderer (QtSvg is part of PySide6-Essentials). Run it again after editing the SVG; the PNGs are committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

ROOT = Path(__file__).resolve().parents[1]
ICONS = ROOT / "resources" / "icons"
NAME = "attention-inspector"
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def render(svg: Path, size: int) -> QImage:
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg} is not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    return image


def main() -> int:
    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    svg = ICONS / f"{NAME}.svg"
    for size in SIZES:
        out = ICONS / "hicolor" / f"{size}x{size}" / "apps" / f"{NAME}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        if not render(svg, size).save(str(out)):
            raise SystemExit(f"could not write {out}")
        print(f"{out.relative_to(ROOT)}  {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
