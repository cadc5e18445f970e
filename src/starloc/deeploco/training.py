"""DeepLoco training on simulated frames, as a generator.

``train(simulator, config)`` draws a fresh simulated batch every step (seeded
``torch.Generator``), minimizes :func:`~starloc.deeploco.loss.kernel_loss` with Adam, yields a
:class:`Progress` after every step and returns the trained :class:`~starloc.deeploco.model.DeepLoco`.

- Learning rate: ``lr`` halved every ``stage_steps`` steps (Adam's state is reset at each stage when
  ``reset_optimizer`` is set, as in the authors' chained runs).
- Validation: every ``val_every`` steps (and at the last step) on a FIXED validation set simulated
  once from ``val_seed``: kernel loss, Jaccard and lateral RMSE at ``tolerance`` nm (axial
  tolerance ``axial_tolerance`` for 3D) after :func:`~starloc.deeploco.postprocess.postprocess`.
- Cancel by closing the generator; the model keeps the weights of the last finished step (and a
  checkpoint is written when ``checkpoint_path`` is given).
- Resume: :meth:`Trainer.save_checkpoint` stores weights, optimizer, step and RNG state;
  ``train(..., resume=path)`` continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, ModelFileError
from ..io import atomic_write
from ..metrics import match
from .calibration import calibrate
from .camera import Camera
from .loss import DEFAULT_SIGMAS, cell_loss, error_loss, kernel_loss
from .model import DeepLoco, psf_from_dict, psf_to_dict
from .network import CELL_ARCHITECTURES, DeepLocoConfig
from .postprocess import cell_grid, concat_tables, postprocess
from .simulate import Simulator

__all__ = ["DeepLocoTrainConfig", "Progress", "Trainer", "train", "truth_positions", "validation_metrics",
           "checkpoint_simulator", "simulation_differences"]

CHECKPOINT_FORMAT = "starloc-deeploco-checkpoint"
CHECKPOINT_VERSION = 1
#: learning-rate halvings over a run when ``stage_steps`` is not given
STAGES = 5


@dataclass(frozen=True)
class DeepLocoTrainConfig:
    """Training hyper-parameters (stored in the model's metadata).

    The defaults are the CPU recipe (see docs/deeploco.md): the fully convolutional U-Net
    with widths (16, 32, 64), kernel + cell loss, Adam at 1e-3 halved every 600 steps, 3000
    steps of 32 frames. The paper's network is ``architecture="paper"`` with
    ``conv_widths=(16, 64, 256)``, ``lr=1e-4`` and many more steps (a GPU job).

    steps : total optimizer steps. batch : frames per step.
    lr : initial learning rate, halved every ``stage_steps`` steps (default ``steps // 5``: five
        halvings over any run length, 600 for the default 3000 steps; a fixed 600 would leave a
        20000-step run at a learning rate of 1e-13).
    reset_optimizer : restart Adam at each stage.
    seed : seeds the network initialisation and the training batches.
    val_size, val_seed, val_every : the fixed validation set and how often to evaluate it.
    tolerance, axial_tolerance : nm, for validation matching.
    architecture : ``"unet"``, ``"fcn"`` or ``"paper"`` (see
        :class:`~starloc.deeploco.network.DeepLocoConfig`). ``"unet"`` is the default: more
        accurate than ``"fcn"`` in every benchmark row (docs/benchmarks.md) at about half its
        speed, still above 300 frames/s on 2 CPU cores.
    n_candidates, conv_widths, fc_width, n_res_blocks, input_scale : architecture of a new model.
    sigmas, kernel, z_scale : the loss.
    cell_loss_weight : weight of :func:`~starloc.deeploco.loss.cell_loss` added to the kernel loss
        (``"fcn"``/``"unet"`` only; 0 trains on the kernel loss alone).
    offset_range : ``"fcn"``/``"unet"``: cells a candidate can reach from its cell centre; the cell
        loss also trains a cell to point at emitters of its neighbours within that reach (see
        :func:`~starloc.deeploco.loss.cell_loss`).
    uncertainty : ``"fcn"``/``"unet"``: give the network an error head, trained beside it by
        :func:`~starloc.deeploco.loss.error_loss` on detached features (the localizations are
        the same as without it, bit for bit) and scaled by the calibration; localizations then
        carry ``uncertainty`` (lateral, nm) and for 3D ``uncertainty_z``.
    link_distance, threshold : post-processing (validation, and the model's defaults; the
        threshold is replaced by the calibrated one when ``calibrate_threshold``).
    calibration_frames : frames simulated after training to choose the model's confidence
        threshold and measure its sub-pixel bias (:func:`~starloc.deeploco.calibration.calibrate`),
        both stored in the model; 0 skips it.
    calibrate_threshold : let the calibration choose the threshold (False keeps ``threshold``).
    """

    steps: int = 3000
    batch: int = 32
    lr: float = 1e-3
    stage_steps: int | None = None
    reset_optimizer: bool = True
    seed: int = 0
    device: str = "cpu"
    val_size: int = 256
    val_seed: int = 12345
    val_every: int = 500
    tolerance: float = 100.0
    axial_tolerance: float = 500.0
    architecture: str = "unet"
    n_candidates: int = 64
    conv_widths: tuple[int, int, int] = (16, 32, 64)
    fc_width: int = 1024
    n_res_blocks: int = 2
    input_scale: float = 100.0
    sigmas: tuple[float, ...] = DEFAULT_SIGMAS
    kernel: str = "laplacian"
    z_scale: float = 0.2
    cell_loss_weight: float = 10.0
    offset_range: float = 0.75
    uncertainty: bool = True
    link_distance: float = 100.0
    threshold: float = 0.3
    calibration_frames: int = 2048
    calibrate_threshold: bool = True

    def __post_init__(self) -> None:
        if self.stage_steps is None and int(self.steps) >= 1:
            object.__setattr__(self, "stage_steps", max(1, int(self.steps) // STAGES))
        for name in ("steps", "batch", "stage_steps", "val_every"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("val_size", "calibration_frames"):
            if int(getattr(self, name)) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be positive, got {self.lr!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conv_widths"] = list(self.conv_widths)
        d["sigmas"] = list(self.sigmas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeepLocoTrainConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for key in ("conv_widths", "sigmas"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def lr_at(self, step: int) -> float:
        """Learning rate of (1-based) ``step``."""
        return self.lr * 0.5 ** ((int(step) - 1) // self.stage_steps)

    def network_config(self, simulator: Simulator) -> DeepLocoConfig:
        return DeepLocoConfig.for_simulator(
            simulator, n_candidates=self.n_candidates, conv_widths=tuple(self.conv_widths),
            fc_width=self.fc_width, n_res_blocks=self.n_res_blocks, input_scale=self.input_scale,
            architecture=self.architecture, offset_range=self.offset_range,
            uncertainty=self.uncertainty and self.architecture in CELL_ARCHITECTURES)


@dataclass(frozen=True)
class Progress:
    """One training step. ``val_*`` are ``None`` except on validation steps (every ``val_every``
    steps and the last); RMSEs in nm (NaN without matches), ``val_rmse_axial`` only for 3D."""

    step: int
    max_steps: int
    loss: float
    lr: float
    elapsed: float
    val_loss: float | None = None
    val_jaccard: float | None = None
    val_rmse_lateral: float | None = None
    val_rmse_axial: float | None = None


def truth_positions(truth: dict[str, torch.Tensor], dim: int) -> torch.Tensor:
    """``(B, N, dim)`` nm positions (x, y[, z]) from a simulator truth dict."""
    keys = ("x", "y", "z")[:dim]
    return torch.stack([truth[k] for k in keys], dim=-1)


def validation_metrics(
    table: dict[str, np.ndarray],
    truth: dict[str, torch.Tensor],
    tolerance: float = 100.0,
    axial_tolerance: float = 500.0,
) -> dict[str, float]:
    """Jaccard and RMSE of a localization table against simulator truth, per frame matching on
    the lateral distance (``<= tolerance``); for 3D, matched pairs with ``|dz| > axial_tolerance``
    count as one false positive and one false negative. RMSE lateral = sqrt(mean(dx² + dy²))."""
    mask = truth["mask"].cpu().numpy()
    tx, ty, tz = (truth[k].cpu().numpy() for k in ("x", "y", "z"))
    three_d = "z" in table
    tp = fp = fn = 0
    lat, ax = [], []
    frames = table["frame"]
    for b in range(mask.shape[0]):
        sel = frames == b
        pred = np.stack([table["x"][sel], table["y"][sel]], 1)
        m = mask[b]
        true = np.stack([tx[b][m], ty[b][m]], 1)
        pi, ti = match(pred, true, tolerance)
        if three_d:
            dz = table["z"][sel][pi] - tz[b][m][ti]
            ok = np.abs(dz) <= axial_tolerance
            pi, ti, dz = pi[ok], ti[ok], dz[ok]
            ax.append(dz)
        tp += len(pi)
        fp += len(pred) - len(pi)
        fn += len(true) - len(ti)
        lat.append(np.sum((pred[pi] - true[ti]) ** 2, axis=1))
    total = tp + fp + fn
    lat_all = np.concatenate(lat) if lat else np.zeros(0)
    out = {
        "jaccard": tp / total if total else 1.0,
        "rmse_lateral": float(np.sqrt(lat_all.mean())) if len(lat_all) else math.nan,
        "tp": tp, "fp": fp, "fn": fn,
    }
    if three_d:
        ax_all = np.concatenate(ax) if ax else np.zeros(0)
        out["rmse_axial"] = float(np.sqrt(np.mean(ax_all**2))) if len(ax_all) else math.nan
    return out


class Trainer:
    """Training state (model, optimizer, RNG, step) and the step loop; see :func:`train`."""

    def __init__(self, simulator: Simulator, config: DeepLocoTrainConfig = DeepLocoTrainConfig(),
                 model: DeepLoco | None = None):
        if not isinstance(simulator, Simulator):
            raise InputError(f"simulator must be a Simulator, got {type(simulator).__name__}")
        self.simulator = simulator
        self.config = config
        self.device = torch.device(config.device)
        if simulator.device.type != self.device.type:
            raise InputError(f"simulator is on {simulator.device}, training on {self.device}")
        if model is None:
            model = DeepLoco.new(config.network_config(simulator), seed=config.seed, psf=simulator.psf,
                                 camera=simulator.camera, link_distance=config.link_distance,
                                 threshold=config.threshold)
        self._check_compatible(model)
        self.model = model.to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.optimizer = self._new_optimizer(config.lr_at(1))
        self.step = 0
        self.elapsed = 0.0
        self._validation: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    def _check_compatible(self, model: DeepLoco) -> None:
        c, sim = model.config, self.simulator
        want = DeepLocoConfig.for_simulator(sim)
        if (c.frame_size, c.dim) != (want.frame_size, want.dim) or abs(c.pixel_size - sim.pixel_size) > 1e-6:
            raise InputError(
                f"model (frames {c.frame_size} px, {c.dim}D, {c.pixel_size:g} nm/px) does not match the "
                f"simulator (frames {want.frame_size} px, {want.dim}D, {sim.pixel_size:g} nm/px)")

    def _new_optimizer(self, lr: float) -> torch.optim.Adam:
        return torch.optim.Adam(self.model.net.parameters(), lr=lr)

    # ------------------------------------------------------------------ validation
    def validation_set(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The fixed validation frames and truth (simulated once from ``val_seed``)."""
        if self._validation is None:
            g = torch.Generator(device=self.device).manual_seed(self.config.val_seed)
            self._validation = self.simulator.sample(self.config.val_size, g)
        return self._validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        c = self.config
        frames, truth = self.validation_set()
        net = self.model.net
        was_training = net.training
        net.eval()
        losses, tables = [], []
        cells = cell_grid(net.config, tuple(frames.shape[-2:]))
        for start in range(0, frames.shape[0], max(c.batch, 64)):
            sl = slice(start, start + max(c.batch, 64))
            pos, w = net(frames[sl])
            tpos = truth_positions({k: v[sl] for k, v in truth.items() if k in ("x", "y", "z")}, net.config.dim)
            losses.append(kernel_loss(pos, w, tpos, truth["mask"][sl], c.sigmas, c.kernel, c.z_scale,
                                      reduction="none"))
            tables.append(postprocess(pos, w, c.link_distance, c.threshold, c.z_scale, frame_offset=start,
                                      cells=cells))
        net.train(was_training)
        table = concat_tables(tables)
        out = validation_metrics(table, truth, c.tolerance, c.axial_tolerance)
        out["loss"] = float(torch.cat(losses).mean())
        return out

    # ------------------------------------------------------------------ loop
    def run(self) -> Generator[Progress, None, DeepLoco]:
        """Train up to ``config.steps``; yields Progress after each step; returns the model."""
        c = self.config
        net = self.model.net
        if c.val_size:
            self.validation_set()
        net.train()
        start = time.perf_counter() - self.elapsed
        progress = None
        while self.step < c.steps:
            step = self.step + 1
            lr = c.lr_at(step)
            if lr != self.optimizer.param_groups[0]["lr"]:
                if c.reset_optimizer:
                    self.optimizer = self._new_optimizer(lr)
                else:
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
            frames, truth = self.simulator.sample(c.batch, self.generator)
            pos, w, err = net.predict(frames)
            true_pos = truth_positions(truth, net.config.dim)
            loss = kernel_loss(pos, w, true_pos, truth["mask"], c.sigmas, c.kernel, c.z_scale)
            cells = cell_grid(net.config, tuple(frames.shape[-2:]))
            if c.cell_loss_weight and cells is not None:
                loss = loss + c.cell_loss_weight * cell_loss(pos, w, true_pos, truth["mask"], (cells.rows, cells.cols),
                                                             cells.cell_nm, z_scale=1.0, reach=cells.offset_range)
            reported = loss.item()  # the localization loss: what Progress reports with or without an error head
            if err is not None:
                loss = loss + error_loss(pos, err, w, true_pos, truth["mask"], (cells.rows, cells.cols), cells.cell_nm,
                                         reach=cells.offset_range)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step = step
            self.elapsed = time.perf_counter() - start
            val: dict[str, Any] = {}
            if c.val_size and (step % c.val_every == 0 or step == c.steps):
                m = self.validate()
                val = dict(val_loss=m["loss"], val_jaccard=m["jaccard"], val_rmse_lateral=m["rmse_lateral"],
                           val_rmse_axial=m.get("rmse_axial"))
            progress = Progress(step, c.steps, reported, lr, self.elapsed, **val)
            yield progress
        net.eval()
        meta = self.training_metadata(progress)
        if c.calibration_frames:
            cal = calibrate(self.model, self.simulator, frames=c.calibration_frames, tolerance=c.tolerance,
                            axial_tolerance=c.axial_tolerance, choose_threshold=c.calibrate_threshold)
            if cal is not None:
                cal.apply(self.model)
                meta["calibration"] = cal.to_dict()
        self.model.metadata = {**self.model.metadata, "training": meta}
        return self.model

    def training_metadata(self, progress: Progress | None) -> dict[str, Any]:
        meta: dict[str, Any] = {**self.config.to_dict(), "steps_done": self.step, "seconds": self.elapsed,
                                "simulator": self.simulator.to_dict()}
        if progress is not None:
            meta["final_loss"] = progress.loss
        return meta

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: Any) -> Path:
        """Weights, optimizer, step, elapsed time and RNG state in one file (atomic, plain data)."""
        payload = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "model": {"config": self.model.file_config(),
                      "state_dict": {k: v.detach().cpu().clone() for k, v in self.model.net.state_dict().items()},
                      "metadata": self.model.metadata},
            "train_config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "elapsed": self.elapsed,
            "rng_state": self.generator.get_state(),
            "simulation": describe_simulation(self.simulator),
        }
        return atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def from_checkpoint(cls, path: Any, simulator: Simulator,
                        config: DeepLocoTrainConfig | None = None) -> Trainer:
        """Restore a trainer; ``config`` (e.g. with more ``steps``) defaults to the stored one."""
        name = str(path)
        obj = _read_checkpoint(path)
        stored_simulation = obj.get("simulation")
        if isinstance(stored_simulation, dict):
            differ = simulation_differences(describe_simulation(simulator), stored_simulation)
            if differ:
                raise InputError(f"the simulation differs from the checkpoint {name!r}'s ({', '.join(differ)}): a "
                                 "resumed run must train on the frames it started on (starloc deeploco train "
                                 "--resume without simulation options uses the checkpoint's)")
        try:
            stored = DeepLocoTrainConfig.from_dict(obj["train_config"])
            model = DeepLoco.from_file_dict({"config": obj["model"]["config"], "state_dict": obj["model"]["state_dict"],
                                             "metadata": obj["model"]["metadata"]}, name)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise _damaged(name, exc) from None
        trainer = cls(simulator, config or stored, model)  # a model/simulator mismatch is the caller's InputError
        try:
            trainer.optimizer = trainer._new_optimizer(stored.lr_at(max(int(obj["step"]), 1)))
            trainer.optimizer.load_state_dict(obj["optimizer"])
            trainer.step = int(obj["step"])
            trainer.elapsed = float(obj["elapsed"])
            trainer.generator.set_state(obj["rng_state"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise _damaged(name, exc) from None
        return trainer


def _damaged(name: str, exc: Exception) -> ModelFileError:
    text = str(exc).strip().splitlines()
    return ModelFileError(f"{name!r}: damaged checkpoint ({text[0] if text else type(exc).__name__})")


def _read_checkpoint(path: Any) -> dict[str, Any]:
    """The checkpoint file's dict (plain data, loaded without executing code)."""
    name = str(path)
    if not Path(path).is_file():
        raise ModelFileError(f"checkpoint {name!r} not found")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:
        raise ModelFileError(f"cannot read checkpoint {name!r}: not a torch file, or corrupt") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{name!r} is not a DeepLoco training checkpoint")
    return obj


def describe_simulation(simulator: Simulator) -> dict[str, Any]:
    """What a run trains on, as plain data: the simulator's settings, its PSF and its camera."""
    camera = simulator.camera
    return {"settings": simulator.to_dict(), "psf": psf_to_dict(simulator.psf),
            "camera": None if camera is None else camera.to_dict()}


def simulation_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Names of the entries in which two :func:`describe_simulation` dicts differ (numbers to a
    relative 1e-9, tensors exactly), e.g. ``["camera", "settings.photons_range"]``."""
    out = []
    if prefix == "settings.":  # written before background_variation existed: flat backgrounds
        a, b = ({"background_variation": 0.0, **d} for d in (a, b))
    for key in sorted(set(a) | set(b)):
        x, y, where = a.get(key), b.get(key), f"{prefix}{key}"
        if isinstance(x, dict) and isinstance(y, dict) and key == "settings":
            out += simulation_differences(x, y, where + ".")
        elif not _same(x, y):
            out.append(where)
    return out


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape and \
            bool(torch.equal(x.cpu(), y.cpu()))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same(u, v) for u, v in zip(x, y))
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
        return math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12)
    return x == y


def checkpoint_simulator(path: Any, device: str | torch.device = "cpu") -> Simulator:
    """The simulator a checkpoint's run trains on (settings, PSF and camera as stored), on
    ``device``. Checkpoints written before they recorded it raise :class:`InputError`."""
    name = str(path)
    obj = _read_checkpoint(path)
    stored = obj.get("simulation")
    if not isinstance(stored, dict):
        raise InputError(f"checkpoint {name!r} does not record its simulation (written by an older starloc): "
                         "give the simulation options of the run it comes from")
    try:
        camera = None if stored["camera"] is None else Camera.from_dict(stored["camera"])
        return Simulator.from_dict(stored["settings"], psf_from_dict(stored["psf"]), camera, device=device)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise _damaged(name, exc) from None


def train(
    simulator: Simulator,
    config: DeepLocoTrainConfig = DeepLocoTrainConfig(),
    model: DeepLoco | None = None,
    resume: Any = None,
    checkpoint_path: Any = None,
    checkpoint_every: int = 0,
) -> Generator[Progress, None, DeepLoco]:
    """Train DeepLoco on frames from ``simulator``; yields :class:`Progress`, returns the model.

    ``model``: continue from these weights (fresh optimizer); ``resume``: a checkpoint written by
    :meth:`Trainer.save_checkpoint` (weights, optimizer, step, RNG: the run continues exactly as
    if uninterrupted; ``config`` may raise ``steps``). ``checkpoint_path``: written every
    ``checkpoint_every`` steps (0: never periodically), when the generator is closed (cancel) and
    at the end. Seeded: same simulator, config and seed give the same model on the same device.
    """
    if resume is not None:
        if model is not None:
            raise InputError("give either model or resume, not both")
        trainer = Trainer.from_checkpoint(resume, simulator, config)
    else:
        trainer = Trainer(simulator, config, model)
    gen = trainer.run()
    try:
        while True:
            try:
                progress = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if checkpoint_path is not None and checkpoint_every and progress.step % checkpoint_every == 0:
                trainer.save_checkpoint(checkpoint_path)
            yield progress
    except GeneratorExit:
        if checkpoint_path is not None:
            trainer.save_checkpoint(checkpoint_path)
        trainer.model.net.eval()
        raise
    if checkpoint_path is not None:
        trainer.save_checkpoint(checkpoint_path)
    return result
