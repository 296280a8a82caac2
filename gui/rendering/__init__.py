"""Display helpers (colour maps, scaling and pooling, thumbnails, labels): numpy + pyqtgraph, nothing else from gui."""
