"""Default training data for DeepLoco: what the simulator draws when the user says nothing.

The network only learns what it is shown, so the defaults cover a wide range of SMLM data
rather than one benchmark: 0 to ``MAX_DENSITY`` emitters/µm² (a count uniform per frame, so
sparse and dense frames are equally common), ``PHOTONS`` per emitter (log-uniform: as many
emitters between 1000 and 2000 photons as between 10000 and 20000, so bright emitters are covered
without starving the dim end) and ``BACKGROUND`` photons/pixel (uniform, one level per frame),
varying smoothly over the frame by up to ``BACKGROUND_VARIATION`` of that level as real backgrounds
do. Narrow them to your data with the ``starloc deeploco train`` options ``--emitters``,
``--photons``, ``--background`` and ``--background-variation``.

Why so wide a brightness range: a network only knows the brightness it was shown. Trained on
500-8000 photons, the astigmatic model returned 2.6 localizations per true emitter at 20000 photons
(bright defocused spots split into several); trained on 500-20000 log-uniform, 1.2, at the cost of
0.01-0.04 in Jaccard at 1000-7000 photons (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import InputError, one_line
from .camera import Camera
from .psf import EmpiricalPSF, PSFModel
from .simulate import Simulator

__all__ = ["MAX_DENSITY", "PHOTONS", "PHOTONS_DISTRIBUTION", "BACKGROUND", "BACKGROUND_VARIATION", "DEFOCUS_2D",
           "default_n_range", "default_simulator", "bead_psf"]

#: emitters per µm² at the top of the default range
MAX_DENSITY = 2.5
#: photons per emitter
PHOTONS = (500.0, 20000.0)
#: how photons are drawn in ``PHOTONS``
PHOTONS_DISTRIBUTION = "log-uniform"
#: background photons per pixel (uniform per frame)
BACKGROUND = (20.0, 200.0)
#: how far (a fraction of its level) a frame's background varies over the frame (Simulator.background_field).
#: Trained on flat backgrounds, the 2D model's Jaccard fell from 0.956 to 0.29 on a background ramp of
#: +-50 % (two false localizations per true one); trained with 0.5, 0.948. On flat frames the two differ
#: by -0.015..+0.005 (docs/benchmarks.md, "Uneven backgrounds").
BACKGROUND_VARIATION = 0.5


#: nm: how far out of focus the emitters of a 2D model's training frames lie (uniform in +-this;
#: EmpiricalPSF.in_focus). Real 2D data are never all in focus. Trained on the in-focus slice only,
#: the 2D model's Jaccard fell from 0.95 to 0.79 with emitters within +-300 nm of focus, 0.52 within
#: +-500 (two localizations for one defocused spot) (docs/benchmarks.md, "Emitters out of focus").
DEFOCUS_2D = 400.0


def default_n_range(frame_shape: tuple[int, int], pixel_size: float) -> tuple[int, int]:
    """``(0, n)`` emitters per frame, ``n`` = ``MAX_DENSITY`` times the frame's area."""
    area_um2 = frame_shape[0] * frame_shape[1] * pixel_size**2 / 1e6
    return 0, max(1, int(math.ceil(MAX_DENSITY * area_um2)))


def default_simulator(psf: PSFModel, camera: Camera | None, frame_shape: tuple[int, int] = (64, 64),
                      pixel_size: float | None = None, **overrides: Any) -> Simulator:
    """A :class:`Simulator` with the default training ranges; ``overrides`` replace any of them
    (``density`` replaces the default count range)."""
    ps = float(pixel_size if pixel_size is not None else getattr(psf, "pixel_size", 100.0))
    kw: dict[str, Any] = dict(frame_shape=tuple(frame_shape), pixel_size=ps, photons_range=PHOTONS,
                              photons_distribution=PHOTONS_DISTRIBUTION,
                              background_range=BACKGROUND, background_variation=BACKGROUND_VARIATION)
    if overrides.get("density") is None and overrides.get("n_range") is None:
        kw["n_range"] = default_n_range(tuple(frame_shape), ps)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return Simulator(psf, camera, **kw)


def bead_psf(path: str | Path, modality: str = "3D", defocus: float = 0.0, **kw: Any) -> EmpiricalPSF:
    """Empirical PSF from a bead z-stack TIFF (``EmpiricalPSF.from_bead_stack``; ``kw`` passed
    on). ``modality="2D"``: a PSF for 2D localization, of the in-focus slice (z = 0) or, with
    ``defocus`` nm, of the slices within that distance of focus (:meth:`EmpiricalPSF.in_focus`;
    training uses ``DEFOCUS_2D``)."""
    import tifffile

    p = Path(path)
    if not p.is_file():
        raise InputError(f"bead stack {str(p)!r} not found")
    try:
        stack = tifffile.imread(p)
    except Exception as exc:
        raise InputError(f"cannot read bead stack {str(p)!r}: {one_line(exc)}") from None
    psf = EmpiricalPSF.from_bead_stack(stack, **kw)
    return psf.in_focus(defocus) if modality.upper() == "2D" else psf
