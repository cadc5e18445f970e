"""LodeSTAR training by geometric self-distillation, as a generator.

``train(crops, config)`` yields a :class:`Progress` after every optimizer step (so a GUI
worker or CLI can show progress and cancel between steps) and returns the trained
:class:`~starloc.lodestar.model.LodeSTAR` when it stops (step budget or loss plateau).

Each step takes S crops, makes ``copies`` randomly transformed copies of each, and
minimizes (1) the mean absolute deviation of the back-transformed pooled predictions
from their mean within each group of copies and (2) ``within_weight`` times the weighted
spread of the per-pixel predictions around the pooled prediction (which clusters the
predictions and makes multi-object detection work).
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from starloc.errors import InputError
from starloc.lodestar.brightness import object_peak
from starloc.lodestar.detection import pool_single, pool_single_symmetries
from starloc.lodestar.holography import Optics
from starloc.lodestar.model import LodeSTAR, Maps, check_downsample, downsample_frames, fixed_normalization
from starloc.lodestar.network import NetworkConfig
from starloc.lodestar.transforms import Compose, Geometric, Noise, Propagate, SignalScale, log_uniform

WEIGHT_EPS = 1e-6
MAX_POSITION_OFFSET = 0.5  # px of the network's input, see measure_position_offset


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (stored in the model file).

    max_steps: hard step budget. ``None`` (the default): :func:`step_budget`, 2600 steps for a
        crop of 64 x 64 model pixels or more and more for smaller crops, up to 5200 (see
        there). 2600: a 64 px crop then trains in <= ~175 s on 2 quiet cores, where 3000 steps
        took up to 193 s; the accuracy benchmark's figures stayed within 0.005 px but for the
        annulus at SNR 2-3, 0.180 / 0.106 -> 0.197 / 0.112 px, still better than both
        baselines. Training stops earlier once the consistency loss has not
    improved by ``plateau_tol`` (relative) for ``patience`` steps, twice: the first plateau
    divides the learning rate by 10, the second ends training.
    min_steps: no early stop before this step (``None``: 2200, scaled as ``max_steps``; never
    above ``max_steps``). The loss flattens long before the accuracy on dim objects does
    (stopping at the first flat stretch, ~1100 steps, left an ellipse at SNR 5 at 0.115 px;
    2300 steps, 0.101 px). 2200: with photon noise the loss is noisier and from step 1500
    the stopper ended 4 of 5 benchmark trainings of one seed at 1923-2156 steps; from 2200
    they reach the cap and beat both baselines at SNR <= 5 in 14 and 10 of 15 cases on two
    seeds, against 11 and 8 (sphere seed 1 at SNR 2: 0.262 -> 0.252 px; docs/benchmarks.md).
    copies: transformed copies of each crop per step. More copies average the consistency
    gradient over more transforms and noise draws: on the SNR-10 ellipse, 8 / 12 / 16 copies
    gave 0.236 / 0.214 / 0.206 px at SNR 3 and 0.101 / 0.093 / 0.091 px at SNR 5, at
    ~50 / 65 / 80 ms per step on a 64 px crop (2 cores).
    translate: max translation per axis in pixels.
    noise: the largest factor by which noise augmentation lowers the SNR of a crop, see
    :class:`~starloc.lodestar.transforms.Noise`; raised for bright crops, see ``dimmest``. It
    is added after the geometric warp, as a camera adds it: interpolation smooths noise, and
    a network trained on smoothed noise erred by 0.94 px (point, SNR 2) where the same
    network trained on white noise erred by 0.33 px.
    shot_noise: range of the photon-noise coefficient of the noise augmentation, see
    :class:`~starloc.lodestar.transforms.Noise` (``(0, 0)``: background-like noise only).
    Without it the network only ever saw noise as strong on the object as around it; real
    photon counts are noisier where the object is bright, and the estimator it learned
    weighed those pixels as if they were not: on the paper's point at SNR 2 / 3 / 5 it erred
    by 0.334 / 0.211 / 0.125 px, behind the centroid's 0.327 / 0.205 / 0.123; with
    ``(0.03, 0.5)`` 0.296 / 0.191 / 0.117. A wider ``(0.03, 1)`` did as well on the point
    but cost the crescent 0.01 px in crowded scenes (multi-object RMSE 0.104 against 0.090)
    and the ellipse at SNR 2 (0.253 against 0.225 px); see docs/benchmarks.md.
    dimmest: the noise augmentation reaches down to objects this many background standard
        deviations bright (the crop's robust peak, see :func:`noise_factor`): the factor is
        ``max(noise, peak / dimmest)``. A crop at the benchmark's SNR 10 peaks at ~45 and keeps
        ``noise``; a bright one would otherwise teach only SNRs far above the dim frames it
        meets (a photobleached time-lapse). Trained on one SNR-40 crop, the ellipse erred by
        0.271 px at SNR 2 with the factor 6 and by 0.223 with 16 (centroid 0.209), the point
        0.335 and 0.313 (0.324); at SNR 10-40 within 0.001 px (docs/benchmarks.md). ``None``,
        or ``noise`` 1 (no noise augmentation): ``noise`` as given.
    gain: the normalized copies are multiplied by a log-uniform factor in ``[1, gain]``, so
    brighter objects than the crop's stay in distribution (without it a model trained at
    SNR 10 erred by 0.5-2 px at SNR 20-30; with it 0.03 px).
    downsample: the model sees crops and images downsampled by this factor (means of
    blocks of d x d pixels; see :mod:`starloc.lodestar.model`). For objects larger than the
    network's receptive field (26 px by default): choose d so that an object spans less
    than ~16 px once downsampled (a larger d costs precision). ``translate`` is in downsampled
    pixels.
    z_range_um: holography (crops of 2 channels, real and imaginary field): teach the axial
        position by propagating each copy by up to this many µm either way (the paper's
        Fourier propagation symmetry, :class:`~starloc.lodestar.transforms.Propagate`);
        needs ``pixel_size_nm`` (in the sample), ``wavelength_nm`` (vacuum) and
        ``n_medium``. Adds the property ``z_um``, relative to the training crop's object.
    signal_range: teach the log of the signal strength (for a small scatterer, of its
        polarizability) by scaling each copy by a log-uniform factor in ``[1/r, r]``
        (:class:`~starloc.lodestar.transforms.SignalScale`); it replaces the ``gain``
        augmentation. Adds the property ``log_signal``, relative to the training crop.
    crop_z_um, crop_signal: what the training crops' object is known to have (its z in µm,
        e.g. from :func:`~starloc.lodestar.holography.refocus_z`; its signal in any unit, e.g.
        a polarizability in µm³): the model then reports absolute values, the crop reading
        these. By default 0 and 1: values relative to the crop.
    Either one switches the model to the ``fixed`` normalization (measured on the crops),
    since a per-frame one would undo the signal's scale. With ``z_range_um`` there is no
    photon-noise augmentation (``shot_noise`` is ignored): a hologram's field carries the
    reference beam's noise, which does not grow with the object's signal.
    """

    max_steps: int | None = None
    min_steps: int | None = None
    patience: int = 300
    plateau_tol: float = 0.02
    copies: int = 12
    crops_per_step: int = 1
    lr: float = 1e-3
    translate: float = 2.0
    rotate: bool = True
    flip: bool = True
    interpolation: str = "bilinear"
    noise: float = 6.0
    dimmest: float | None = 10.0
    shot_noise: tuple[float, float] = (0.03, 0.5)
    gain: float = 3.0
    within_weight: float = 0.1
    dropout: float = 0.01
    seed: int = 0
    device: str = "cpu"
    downsample: int = 1
    z_range_um: float | None = None
    signal_range: float | None = None
    wavelength_nm: float = 633.0
    pixel_size_nm: float | None = None
    n_medium: float = 1.33
    crop_z_um: float = 0.0
    crop_signal: float = 1.0
    network: NetworkConfig = field(default_factory=NetworkConfig)

    @property
    def extra_properties(self) -> tuple[str, ...]:
        """Names of the properties after (row, col) this config teaches, in channel order."""
        return (("z_um",) if self.z_range_um else ()) + (("log_signal",) if self.signal_range else ())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["network"] = self.network.to_dict()
        return d


BASE_STEPS = (2600, 2200)  # (max_steps, min_steps) for a crop of REFERENCE_SIDE^2 model pixels or more
REFERENCE_SIDE = 64
MAX_STEP_SCALE = 2.0


def step_budget(config: TrainConfig, crop_shapes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """``(max_steps, min_steps)`` of a training on crops of these ``(H, W)`` input pixels.

    Explicit ``config.max_steps`` / ``min_steps`` are kept (``min_steps`` capped at
    ``max_steps``). ``None`` takes :data:`BASE_STEPS` times ``64^2 / area``, the mean crop
    area in model pixels (after ``config.downsample``), clipped to ``[1, 2]``: a step costs
    about in proportion to the area, so a crop of 45 px or less trains twice the steps in
    about the time 2600 steps of a 64 px crop take (40 px, 5200 steps: 110-113 s on 2 cores;
    64 px, 2600 steps: 114-122 s, in one run of bench/lodestar_speed.py). The cap bounds the
    time of tiny crops, whose steps cost mostly the fixed overhead. More steps are more
    precise on dim objects: on the accuracy benchmark's sphere (seed 1, a 40 px crop) 2600
    steps erred by 0.239 / 0.153 / 0.091 px at SNR 2 / 3 / 5, behind the centroid's 0.236 /
    0.151 / 0.092 at SNR 2 and 3, and 5200 steps by 0.233 / 0.148 / 0.089 px
    (docs/benchmarks.md).
    """
    d = check_downsample(config.downsample)
    area = float(np.mean([(h // d) * (w // d) for h, w in crop_shapes]))
    scale = min(MAX_STEP_SCALE, max(1.0, REFERENCE_SIDE**2 / max(area, 1.0)))
    max_steps = config.max_steps if config.max_steps is not None else round(BASE_STEPS[0] * scale)
    min_steps = config.min_steps if config.min_steps is not None else round(BASE_STEPS[1] * scale)
    return max_steps, min(min_steps, max_steps)


def noise_factor(config: TrainConfig, crops: Sequence[torch.Tensor]) -> float:
    """The noise augmentation's largest factor for these normalized ``(C, H, W)`` crops:
    ``max(config.noise, peak / config.dimmest)``, ``peak`` the median over the crops of the
    largest |3 x 3 median| (in background standard deviations; dark objects count by their
    depth, a hot pixel not at all).
    ``config.noise`` when ``config.dimmest`` is None or ``config.noise`` is 1 (augmentation off)."""
    if config.dimmest is None or config.noise <= 1:
        return float(config.noise)
    if not config.dimmest > 0:
        raise InputError(f"dimmest must be > 0 or None, got {config.dimmest}")
    peaks = []
    for crop in crops:
        x = crop.detach().to("cpu", torch.float32)
        x = torch.nn.functional.pad(x[None], (1, 1, 1, 1), mode="replicate")[0]
        patches = x.unfold(1, 3, 1).unfold(2, 3, 1)  # (C, H, W, 3, 3)
        peaks.append(float(patches.flatten(-2).median(dim=-1).values.abs().max()))  # dark objects too
    return max(float(config.noise), float(np.median(peaks)) / config.dimmest)


@dataclass(frozen=True)
class Progress:
    """One training step: losses in pixels (per property component), elapsed seconds."""

    step: int
    max_steps: int
    loss: float
    consistency: float
    within: float
    lr: float
    elapsed: float


def pooled_weights(rho: torch.Tensor, dropout: float, generator: torch.Generator) -> torch.Tensor:
    """Training weights ``(D(sigmoid(rho)) + eps) / sum(...)`` over each map, ``(N, h, w)``.

    ``D`` is dropout with rate ``dropout`` (it stops the weight collapsing onto one pixel).
    """
    keep = torch.rand(rho.shape, generator=generator, device=generator.device).to(rho.device) >= dropout
    w = torch.sigmoid(rho) * keep / (1 - dropout) + WEIGHT_EPS
    return w / w.sum(dim=(1, 2), keepdim=True)


def self_distillation_losses(model, images, transform, generator, copies, dropout, gain=1.0):
    """The two LodeSTAR losses for a batch ``(S, C, H, W)`` of normalized crops."""
    s, _, h, w = images.shape
    batch, params = transformed_copies(model, images.repeat_interleave(copies, dim=0), transform, generator, gain)
    P, rho = model.forward_normalized(batch, origin=((h - 1) / 2, (w - 1) / 2))
    wn = pooled_weights(rho, dropout, generator)[:, None]
    pooled = (P * wn).sum(dim=(2, 3))
    back = transform.invert(pooled, params).view(s, copies, -1)
    consistency = (back - back.mean(dim=1, keepdim=True)).abs().mean()
    within = ((P - pooled[..., None, None]).abs() * wn).sum(dim=(2, 3)).mean()
    return consistency, within


def transformed_copies(model: LodeSTAR, batch: torch.Tensor, transform: Compose, generator: torch.Generator,
                       gain: float = 1.0) -> tuple[torch.Tensor, list]:
    """Training copies of a batch of normalized crops: each transformed (warp, property
    transforms, then noise), normalized again as a frame would be (:meth:`LodeSTAR.renormalize`),
    and scaled by a log-uniform gain in
    ``[1, gain]``; with the transforms' parameters (to invert the properties)."""
    params = transform.sample(batch.shape, generator, device=batch.device)
    batch = model.renormalize(transform.apply(batch, params))
    if gain > 1:
        batch = batch * log_uniform(batch.shape[0], 1.0, gain, generator, batch.device).view(-1, 1, 1, 1)
    return batch, params


def augmentation(config: TrainConfig) -> Compose:
    """The transforms of one training copy: geometric warp, the property transforms the config
    asks for (propagation, signal scaling), then noise (white, as a camera's)."""
    steps = [Geometric(config.translate, config.rotate, config.flip, config.interpolation)]
    names = config.extra_properties
    if config.z_range_um:
        optics = Optics(config.wavelength_nm, config.pixel_size_nm, config.n_medium)
        steps.append(Propagate(config.z_range_um, optics, index=2 + names.index("z_um")))
    if config.signal_range:
        steps.append(SignalScale(config.signal_range, index=2 + names.index("log_signal")))
    return Compose((*steps, Noise(config.noise, tuple(config.shot_noise))))


def _check_properties(config: TrainConfig, in_channels: int) -> None:
    """Bad property settings as a clear :class:`InputError`."""
    if config.z_range_um is not None:
        if not (math.isfinite(config.z_range_um) and config.z_range_um > 0):
            raise InputError(f"z range must be a positive number of µm, got {config.z_range_um}")
        if in_channels != 2:
            raise InputError("axial training propagates a complex field: the crop needs 2 channels (real, "
                             f"imaginary), it has {in_channels}")
        if config.pixel_size_nm is None:
            raise InputError("axial training needs the pixel size in the sample (nm)")
        if config.downsample != 1:
            raise InputError("axial training propagates the field at the camera's pixel size: downsampling "
                             f"(here {config.downsample}) is not supported with it")
        Optics(config.wavelength_nm, config.pixel_size_nm, config.n_medium)
    if config.signal_range is not None and not (math.isfinite(config.signal_range) and config.signal_range > 1):
        raise InputError(f"signal range must be a factor > 1, got {config.signal_range}")
    if not math.isfinite(config.crop_z_um):
        raise InputError(f"the crop's z must be a finite number of µm, got {config.crop_z_um}")
    if not (math.isfinite(config.crop_signal) and config.crop_signal > 0):
        raise InputError(f"the crop's signal must be a positive number, got {config.crop_signal}")


def _as_crop_tensors(crops: Sequence[np.ndarray], in_channels: int) -> list[torch.Tensor]:
    """Crops as float32 ``(C, H, W)`` tensors; 2D crops get one channel."""
    out = []
    for crop in crops:
        a = np.asarray(crop, dtype=np.float32)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.shape[0] != in_channels:
            raise ValueError(f"crop of shape {a.shape} does not match {in_channels} input channel(s)")
        out.append(torch.from_numpy(a))
    return out


def _with_extra_properties(config: TrainConfig) -> TrainConfig:
    """``config`` as training with extra properties (z, signal) runs it: a network output per
    property, and no augmentation that would change them (gain for the signal, shot noise for z)."""
    extra = config.extra_properties
    if not extra:
        return config
    return replace(config, gain=1.0 if config.signal_range else config.gain,
                   shot_noise=(0.0, 0.0) if config.z_range_um else config.shot_noise,
                   network=replace(config.network, n_properties=2 + len(extra)))


def new_model(config: TrainConfig) -> LodeSTAR:
    """The untrained model :func:`train` starts from when given none (the same weights for the
    same seed): pass it to ``train`` to look at it while it learns (the widget's weight-map
    preview). InputError for properties the network's inputs cannot learn, as ``train``."""
    _check_properties(config, config.network.in_channels)
    config = _with_extra_properties(config)
    return LodeSTAR.new(config.network, seed=config.seed, downsample=check_downsample(config.downsample),
                        normalization="fixed" if config.extra_properties else "background")


def train(
    crops: Sequence[np.ndarray], config: TrainConfig = TrainConfig(), model: LodeSTAR | None = None
) -> Generator[Progress, None, LodeSTAR]:
    """Train LodeSTAR on one or several crops, each ``(H, W)`` or ``(C, H, W)``, one object each.

    Yields a :class:`Progress` after every step; returns the model. Stop early by closing the
    generator (the model then keeps the weights of the last finished step). Seeded: the same
    crops, config and seed give the same model on the same device.
    """
    device = torch.device(config.device)
    factor = check_downsample(config.downsample)
    extra = config.extra_properties
    _check_properties(config, config.network.in_channels if model is None else model.config.in_channels)
    config = _with_extra_properties(config)
    if model is None:
        model = new_model(config)
    elif model.downsample != factor:
        raise InputError(f"the model downsamples by {model.downsample}, the training config by {factor}")
    elif model.config.n_properties != 2 + len(extra):
        raise InputError(f"the model predicts {model.config.n_properties} properties, the training config "
                         f"teaches {2 + len(extra)}")
    model.to(device)
    tensors = _as_crop_tensors(crops, model.config.in_channels)
    max_steps, min_steps = step_budget(config, [tuple(t.shape[-2:]) for t in tensors])
    config = replace(config, max_steps=max_steps, min_steps=min_steps)
    seen = [downsample_frames(t[None].to(device), factor) for t in tensors]
    if model.normalization == "fixed" and model.fixed_input is None:
        model.fixed_input = fixed_normalization([t[0] for t in seen])
    groups = _group_by_shape([model.normalize(t)[0] for t in seen])
    config = replace(config, noise=noise_factor(config, [t for group in groups for t in group]))
    transform = augmentation(config)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=config.lr)
    stopper = PlateauStopper(config)
    model.net.train()
    start = time.perf_counter()
    for step in range(1, config.max_steps + 1):
        group = groups[int(torch.randint(len(groups), (1,), generator=generator, device=device))]
        pick = torch.randperm(len(group), generator=generator, device=device)[: config.crops_per_step]
        images = torch.stack([group[i] for i in pick.tolist()])
        consistency, within = self_distillation_losses(
            model, images, transform, generator, config.copies, config.dropout, config.gain
        )
        loss = consistency + config.within_weight * within
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress = Progress(step, config.max_steps, loss.item(), consistency.item(), within.item(),
                            optimizer.param_groups[0]["lr"], time.perf_counter() - start)
        action = stopper.update(step, progress.consistency)
        yield progress
        if action == "stop":
            break
        if action == "decay":
            for g in optimizer.param_groups:
                g["lr"] *= 0.1
    model.net.eval()
    model.position_offset = measure_position_offset(model, groups, transform, generator, config.gain)
    if extra:
        model.property_offset = ()
        known = {"z_um": config.crop_z_um, "log_signal": math.log(config.crop_signal)}
        model.property_offset = tuple(read - known[name]
                                      for read, name in zip(crop_properties(model, groups, transform, generator), extra))
    model.metadata = {**model.metadata, "properties": ["row", "col", *extra],
                      "training": {**config.to_dict(), "steps_done": step,
                      "final_consistency": progress.consistency, "seconds": progress.elapsed,
                      "crop_shapes": [list(t.shape) for t in tensors],
                      "position_offset": list(model.position_offset),
                      "object_peak": max(object_peak(t[None]) for group in groups for t in group)}}
    return model


@torch.inference_mode()
def measure_position_offset(model: LodeSTAR, groups: list[list[torch.Tensor]], transform: Compose,
                            generator: torch.Generator, gain: float = 1.0, copies: int = 64,
                            batch_size: int = 16) -> tuple[float, float]:
    """The constant (row, col) offset of the network's positions, in its own frame and pixels:
    the model's ``position_offset`` plus the median over ``copies`` training copies (the
    training's transforms and noise) of the single-object pooling minus the median pooling
    over the 8 grid symmetries, which cancels any such offset (its 8 turned copies sum to 0).

    The flips and rotations of training penalize such an offset, but not always to zero: one
    ellipse model of the accuracy benchmark kept -0.09 px along columns, 0.09 px of multi-object
    RMSE where the 8-symmetry average gave 0.044. Positions only; other properties are left.
    A component is corrected only where the median differs from 0 by >= 3 standard errors
    (the copies of an untrained network disagree by pixels, those of a trained one by
    ~0.05 px), and clipped to +-``MAX_POSITION_OFFSET`` px: a larger offset comes from a
    network that has not learned the object yet, not from a residual.
    """
    per_crop = _copies_per_crop(groups, copies)
    diffs = []
    for group in groups:
        _, read = _read_copies(model, group, per_crop, transform, generator, gain, batch_size)
        for maps in read:
            plain = pool_single(Maps(maps.positions[0], maps.weights[0], maps.stride, maps.image_shape,
                                     maps.receptive_field, maps.downsample))
            diffs.append(plain[:, :2] - pool_single_symmetries(maps)[:, :2])
    diffs = np.concatenate(diffs)
    median = np.median(diffs, axis=0)
    # standard error of a median, from the MAD: 1.2533 * sigma / sqrt(n), sigma = 1.4826 * MAD
    error = 1.2533 * 1.4826 * np.median(np.abs(diffs - median), axis=0) / np.sqrt(len(diffs))
    measured = np.where(np.abs(median) >= 3 * error, median, 0.0)
    offset = np.clip(measured + np.asarray(model.position_offset), -MAX_POSITION_OFFSET, MAX_POSITION_OFFSET)
    return float(offset[0]), float(offset[1])


@torch.inference_mode()
def crop_properties(model: LodeSTAR, groups: list[list[torch.Tensor]], transform: Compose,
                    generator: torch.Generator, copies: int = 64, batch_size: int = 16) -> tuple[float, ...]:
    """The properties after (row, col) that ``model`` reads on its (normalized) training
    crops: transformed copies of each crop (the training's transforms and noise; 8 grid
    symmetries each) read and mapped back, their median per crop, the mean over the crops.
    Subtracted at inference (``property_offset``), they make z and log-signal relative to
    the crops.

    The median over copies, not the crop read once: one reading carries the noise of that
    one image, which then shifts every output. With the holography benchmark's two trainings
    (seeds 0 / 1, 2 threads, its noise-0.05 test set; a `/tmp` script) the copies took the
    signal's bias from +0.024 / −0.077 (log) to +0.004 / +0.013 and z's from +17 / +41 nm to
    +39 / +8 nm (docs/benchmarks.md).
    """
    per_crop = _copies_per_crop(groups, copies)
    values = []
    for group in groups:
        params, read = _read_copies(model, group, per_crop, transform, generator, 1.0, batch_size)
        pooled = torch.from_numpy(np.concatenate([pool_single_symmetries(m) for m in read])).to(torch.float32)
        back = transform.invert(pooled, params)[:, 2:].view(len(group), per_crop, -1)
        values.append(back.median(dim=1).values.numpy())
    return tuple(float(v) for v in np.concatenate(values).mean(axis=0))


def _copies_per_crop(groups: list[list[torch.Tensor]], copies: int) -> int:
    """Transformed copies of each crop so that all crops together give about ``copies`` (>= 2)."""
    return max(2, -(-copies // sum(len(group) for group in groups)))


def _read_copies(model: LodeSTAR, group: list[torch.Tensor], per_crop: int, transform: Compose,
                 generator: torch.Generator, gain: float, batch_size: int) -> tuple[list, list[Maps]]:
    """``per_crop`` training copies of each crop of ``group`` (in crop order), the transforms'
    parameters and their maps over the 8 grid symmetries, ``batch_size`` copies per map."""
    batch, params = transformed_copies(model, torch.stack(group).repeat_interleave(per_crop, dim=0), transform,
                                       generator, gain)
    return params, [model.network_maps(batch[start : start + batch_size], symmetries=True)
                    for start in range(0, len(batch), batch_size)]


def _group_by_shape(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(tuple(t.shape), []).append(t)
    return list(groups.values())


class PlateauStopper:
    """Learning-rate decay and early stopping on a plateau of an exponential moving average."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.ema = math.nan
        self.best = math.inf
        self.best_step = 0
        self.decayed = False

    def update(self, step: int, value: float) -> str | None:
        c = self.config
        alpha = 2 / (min(step, c.patience / 3) + 1)
        self.ema = value if math.isnan(self.ema) else (1 - alpha) * self.ema + alpha * value
        if self.ema < self.best * (1 - c.plateau_tol):
            self.best, self.best_step = self.ema, step
        if step < c.min_steps or step - self.best_step < c.patience:
            return None
        if self.decayed:
            return "stop"
        self.decayed, self.best, self.best_step = True, self.ema, step
        return "decay"

