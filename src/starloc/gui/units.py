"""Physical pixel sizes and placement of napari layers: napari >= 0.6 layers carry a unit per axis.

Readers that know the pixel size (and users, through the layer's properties) set ``scale`` and
``units``; a plain array has unit ``pixel`` and tells nothing.
"""

from __future__ import annotations


def axis_nm(layer, axis: int) -> float | None:
    """The layer's step along ``axis`` in nm, or None when its unit there is not a length
    (``pixel``, the default) or the napari version has no units."""
    units = getattr(layer, "units", None)
    if units is None:
        return None
    try:
        return float((layer.scale[axis] * units[axis]).to("nm").magnitude)
    except Exception:  # pint's DimensionalityError (pixel), or a unit pint does not know
        return None


def pixel_size_nm(layer) -> float | None:
    """The layer's pixel size in nm when both image axes (the last two) are lengths of the same
    size (square pixels), else None."""
    rows, cols = axis_nm(layer, -2), axis_nm(layer, -1)
    if rows is None or cols is None or abs(rows - cols) > 1e-6 * max(rows, cols):
        return None
    return cols


def check_axis_aligned(layer) -> None:
    """Refuse (InputError) an image layer that is rotated, sheared or given an affine
    transform: the output layers are placed with its scale and translate only, and would sit
    beside the objects (a 30° rotation put detections ~20 px off on screen)."""
    import numpy as np

    from starloc.errors import InputError

    ndim = int(layer.ndim)
    plain = (np.allclose(np.asarray(layer.rotate, float), np.eye(ndim))
             and np.allclose(np.asarray(layer.shear, float), 0.0)
             and np.allclose(np.asarray(layer.affine.affine_matrix, float), np.eye(ndim + 1)))
    if not plain:
        raise InputError(f"layer {layer.name!r} is rotated, sheared or has an affine transform; starloc places its "
                         "results with the layer's scale and translate only, so they would not sit on the objects: "
                         "reset the transform (layer.rotate = 0, layer.shear = 0, layer.affine = None) and run again")


def placement(scale, translate, units) -> dict:
    """Layer keywords that put an output layer on its source image: its scale and translate,
    and its units where napari has them (``units=None``), so napari sees consistent units."""
    return {"scale": scale, "translate": translate, **({"units": units} if units is not None else {})}


def stated_spacing_nm(layer) -> tuple[float | None, float | None]:
    """``(pixel size, step along the first axis)`` in nm: from the layer's units, else from the
    ImageJ/OME metadata of the TIFF file it was opened from; None where neither says."""
    pixel, first = pixel_size_nm(layer), axis_nm(layer, 0)
    path = getattr(getattr(layer, "source", None), "path", None)
    from starloc.lazy_tiff import TIFF_SUFFIXES

    if (pixel is None or first is None) and path and str(path).lower().endswith(TIFF_SUFFIXES):
        from starloc.tiff_metadata import tiff_spacing

        stated = tiff_spacing(path)
        pixel = pixel if pixel is not None else stated[0]
        first = first if first is not None else stated[1]
    return pixel, first


def stated_pixel_size_nm(layer) -> float | None:
    """The layer's pixel size in nm (see :func:`stated_spacing_nm`), or None."""
    return stated_spacing_nm(layer)[0]
