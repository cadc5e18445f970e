"""DeepLoco: simulate SMLM frames from a PSF and a camera model, train a network on them, and
localize whole stacks with it.

Modules: :mod:`.psf` and :mod:`.camera` (forward model), :mod:`.simulate` (training frames),
:mod:`.recipes` (default training data), :mod:`.network`, :mod:`.loss`, :mod:`.training`,
:mod:`.model` (model files, per-frame localization), :mod:`.postprocess`, :mod:`.stack` (whole
stacks: tiles, lazy reading), :mod:`.baseline` (classical Gaussian fitting, for comparison),
:mod:`.demo`.

Conventions shared by every module of this package:

- Physical coordinates are in nm: ``x`` along image columns, ``y`` along image rows, origin at the
  image's top-left *corner*, so pixel ``j``'s centre is at ``(j + 0.5) * pixel_size``
  (ThunderSTORM / SMLM Challenge 2016 convention).
- ``z`` is in nm, 0 at focus; slice ``k`` of a bead z-stack is at ``z0 + k * z_step``.
- Images are torch tensors in *photons* (expected photons per pixel before the camera, or
  normalized camera frames); ADU only at the camera boundary.
- Devices are explicit arguments; randomness comes from an explicit ``torch.Generator``
  (on the same device as the tensors it fills), so the same seed gives the same batch.

This package is part of the core: it imports torch, numpy and scipy/scikit-image, never napari or Qt.
"""

from .camera import EMCCD, SCMOS, Camera
from .psf import AstigmaticPSF, EmpiricalPSF, Gaussian2DPSF, PSFModel
from .simulate import Simulator

__all__ = [
    "PSFModel",
    "EmpiricalPSF",
    "Gaussian2DPSF",
    "AstigmaticPSF",
    "Camera",
    "EMCCD",
    "SCMOS",
    "Simulator",
]
