"""napari-starloc: LodeSTAR and DeepLoco localization with a torch core.

Pixel coordinates everywhere in this package are (..., row, col) with pixel centres at
integer positions and frames 0-based, as in napari.
"""

__version__ = "0.1.0"
