"""Attention Inspector's PySide6 + pyqtgraph views. Owns every thread; draws Traces; no tensor math."""
