"""Pixel size and z step as microscopy software writes them: units spelled as XML character
references in OME, and ImageJ's per-axis units (``zunit``, ``yunit``)."""

import numpy as np
import pytest
import tifffile

from starloc.tiff_metadata import tiff_spacing

STACK = np.zeros((5, 16, 16), np.uint16)


@pytest.mark.parametrize("micro", ["µm", "&#181;m", "&#xB5;m", "&#956;m", "&micro;m"])
def test_ome_units_written_as_character_references_are_read(tmp_path, micro):
    """Python's ElementTree writes ``µm`` as ``&#181;m``; a file that states 160 nm pixels and a
    20 nm z step must not read as one that states nothing (and train at the 100 nm default)."""
    ref = tmp_path / "ref.ome.tif"
    tifffile.imwrite(ref, STACK, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.16, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.16,
        "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": 0.02, "PhysicalSizeZUnit": "µm"})
    with tifffile.TiffFile(ref) as tif:
        xml = tif.ome_metadata.replace('"µm"', f'"{micro}"')
    path = tmp_path / "beads.ome.tif"
    tifffile.imwrite(path, STACK, description=xml.encode(), metadata=None, photometric="minisblack")
    assert tiff_spacing(path) == (pytest.approx(160.0), pytest.approx(20.0))


def test_imagej_per_axis_units_are_honoured(tmp_path):
    """ImageJ writes ``zunit`` / ``yunit`` when an axis's unit differs from ``unit`` (a z step set
    to nm in Image > Properties) and reads the spacing in it: 10 nm, not 10 µm."""
    z_nm = tmp_path / "z.tif"
    tifffile.imwrite(z_nm, STACK, imagej=True, resolution=(10, 10),
                     metadata={"axes": "ZYX", "unit": "micron", "spacing": 10, "zunit": "nm"})
    assert tiff_spacing(z_nm) == (pytest.approx(100.0), pytest.approx(10.0))
    y_nm = tmp_path / "y.tif"  # x: 10 px per µm; y: 0.01 px per nm; both 100 nm
    tifffile.imwrite(y_nm, STACK, imagej=True, resolution=(10, 0.01),
                     metadata={"axes": "ZYX", "unit": "micron", "spacing": 0.02, "yunit": "nm"})
    assert tiff_spacing(y_nm) == (pytest.approx(100.0), pytest.approx(20.0))


def test_a_z_step_stated_for_a_time_series_is_not_taken(tmp_path):
    """A bead scan saved as time points (axes TYX) with Micro-Manager's default PhysicalSizeZ of
    1 µm: that z step describes none of the file's axes. Stated for a z-stack, it is read; and a
    plain ImageJ stack (axes IYX, images= but no slices=) keeps its spacing."""
    beads = np.zeros((6, 16, 16), np.uint16)
    meta = {"PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1, "PhysicalSizeZ": 1.0}
    tifffile.imwrite(tmp_path / "t.tif", beads, ome=True, metadata={"axes": "TYX", **meta})
    assert tiff_spacing(tmp_path / "t.tif") == (pytest.approx(100.0), None)
    tifffile.imwrite(tmp_path / "z.tif", beads, ome=True, metadata={"axes": "ZYX", **meta})
    assert tiff_spacing(tmp_path / "z.tif") == (pytest.approx(100.0), pytest.approx(1000.0))
    tifffile.imwrite(tmp_path / "i.tif", beads, imagej=True, resolution=(10.0, 10.0),
                     metadata={"unit": "micron", "spacing": 0.02})
    assert tiff_spacing(tmp_path / "i.tif") == (pytest.approx(100.0), pytest.approx(20.0))


def test_plain_resolution_tags_in_centimetres_state_the_pixel_size(tmp_path):
    """Some acquisition software calibrates the baseline TIFF tags (pixels per cm) and writes no
    ImageJ or OME metadata; the default inch unit (72 dpi) calibrates nothing."""
    tifffile.imwrite(tmp_path / "cm.tif", STACK, resolution=(1e7 / 160, 1e7 / 160), resolutionunit="CENTIMETER")
    assert tiff_spacing(tmp_path / "cm.tif") == (pytest.approx(160.0), None)
    tifffile.imwrite(tmp_path / "dpi.tif", STACK, resolution=(72, 72))
    assert tiff_spacing(tmp_path / "dpi.tif") == (None, None)
    tifffile.imwrite(tmp_path / "oblong.tif", STACK, resolution=(1e5, 2e5), resolutionunit="CENTIMETER")
    assert tiff_spacing(tmp_path / "oblong.tif") == (None, None)
