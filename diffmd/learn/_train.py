"""Energy and force matching of neural potentials on a ``diffmd.datasets.Dataset``.

Loss of a mini-batch B of frames (N atoms each)::

    L = w_E * mean_b ((E_b - E_ref_b) / N)^2  +  w_F * mean_{b,i} |F_bi - F_ref_bi|^2

with energies in kJ/mol (so the energy term is per atom, kJ^2/mol^2), forces in
kJ/mol/nm and |.| the Euclidean norm over x, y, z; ``F = -grad_x E`` of the model.
One step is jitted and vmapped over the batch's frames; each frame gets its own
neighbor table, rebuilt inside the step from a template sized on the host for every
frame (``datasets.table_for_frames``).

Before training, a per-species energy shift is fitted by least squares
(``E_ref_b ~ sum_s count_bs * shift_s``, minimum-norm when the counts do not
determine it, e.g. a single molecule) and put into the model's atomic shift, so the
network starts out fitting only the conformational energy.

Validation metrics: energy MAE [kJ/mol] (whole-frame energies) and force RMSE
[kJ/mol/nm] (over all force components). Checkpoints (``out/checkpoint/``, orbax,
``diffmd.io``) hold params, optimizer state and history; ``resume=True``
continues bit for bit: the batch of step k depends only on the seed and k.

``diffmd train CONFIG`` reads a TOML file (``load_config``; see
``examples/train_schnet_alanine.toml``) and runs :func:`run_config`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _datasets as ds
from ..kernels.errors import InputError
from ..kernels.neighbors import Neighbors, rebuild_neighbors
from ..io import find_checkpoint, restore_checkpoint, save_checkpoint
import sys
from tqdm.auto import tqdm

METRICS_FILE = "metrics.csv"
METRIC_COLUMNS = ("step", "train_loss", "val_energy_mae_kjmol", "val_force_rmse_kjmolnm")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the ``[train]`` table of a config file).

    Attributes:
        steps: optimizer steps.
        batch_size: frames per step.
        learning_rate: peak learning rate.
        optimizer: ``"adam"`` or ``"adamw"``.
        weight_decay: decoupled weight decay (adamw).
        schedule: ``"constant"``, ``"warmup_cosine"`` (linear warm-up, cosine decay to
            ``final_learning_rate``) or ``"exponential"`` (decay by ``decay_rate`` every
            ``decay_steps``, after warm-up).
        warmup_steps: linear warm-up steps.
        final_learning_rate: end value of the cosine schedule.
        decay_rate, decay_steps: exponential schedule.
        clip_norm: global gradient-norm clip (0: none).
        energy_weight, force_weight: ``w_E``, ``w_F`` of the loss. Force components in
            kJ/mol/nm are typically 10-100 times the per-atom energy errors in kJ/mol, so the
            default 1 : 0.01 keeps the energy term from being drowned out (with equal weights
            the total energy drifts while the forces improve).
        seed: seed of batches (and of the split in ``run_config``).
        validation_fraction: share of frames held out (``run_config``).
        validate_every: steps between validation metrics (and metrics.csv rows).
        checkpoint_every: steps between checkpoints (0: only at the end; needs ``out``).
    """

    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    schedule: str = "warmup_cosine"
    warmup_steps: int = 50
    final_learning_rate: float = 1e-5
    decay_rate: float = 0.5
    decay_steps: int = 1000
    clip_norm: float = 0.0
    energy_weight: float = 1.0
    force_weight: float = 0.01
    seed: int = 0
    validation_fraction: float = 0.1
    validate_every: int = 100
    checkpoint_every: int = 0

    def __post_init__(self):
        if self.optimizer not in ("adam", "adamw"):
            raise InputError(f"[train] optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("constant", "warmup_cosine", "exponential"):
            raise InputError(f"[train] schedule must be 'constant', 'warmup_cosine' or 'exponential', got "
                             f"{self.schedule!r}")
        for name in ("steps", "batch_size", "validate_every"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"[train] {name} must be >= 1, got {getattr(self, name)!r}")
        if self.learning_rate <= 0 or self.energy_weight < 0 or self.force_weight < 0:
            raise InputError("[train] learning_rate must be > 0 and the loss weights >= 0")
        if self.checkpoint_every < 0 or self.warmup_steps < 0:
            raise InputError("[train] checkpoint_every and warmup_steps must be >= 0")


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """The optax optimizer (with its learning-rate schedule and optional clipping) of ``cfg``."""
    lr = float(cfg.learning_rate)
    if cfg.schedule == "constant":
        schedule = optax.constant_schedule(lr)
    elif cfg.schedule == "warmup_cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0 if cfg.warmup_steps else lr, lr, int(cfg.warmup_steps),
                                                      max(int(cfg.steps), int(cfg.warmup_steps) + 1),
                                                      float(cfg.final_learning_rate))
    else:
        decay = optax.exponential_decay(lr, int(cfg.decay_steps), float(cfg.decay_rate))
        schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, int(cfg.warmup_steps)), decay],
                                        [int(cfg.warmup_steps)]) if cfg.warmup_steps else decay
    if cfg.optimizer == "adam":
        opt = optax.adam(schedule)
    else:
        opt = optax.adamw(schedule, weight_decay=float(cfg.weight_decay))
    return optax.chain(optax.clip_by_global_norm(float(cfg.clip_norm)), opt) if cfg.clip_norm > 0 else opt


def fit_energy_shift(dataset: ds.Dataset, species: np.ndarray, n_species: int) -> np.ndarray:
    """Per-species energy shifts [kJ/mol] by least squares, ``E_ref ~ counts @ shift`` ((S,) array).

    Args:
        dataset: reference frames.
        species: (N,) species indices (-1 for padding atoms, not counted).
        n_species: S.
    """
    species = np.asarray(species)
    counts = np.array([np.sum(species == s) for s in range(n_species)], np.float64)
    a = np.broadcast_to(counts, (len(dataset), n_species))
    shift, *_ = np.linalg.lstsq(a, dataset.energies, rcond=None)
    return shift


def energy_scale(dataset: ds.Dataset, species: np.ndarray, shift: np.ndarray) -> float:
    """Initial per-atom energy scale [kJ/mol]: std of the shift-corrected energies over sqrt(N) (at least 1)."""
    species = np.asarray(species)
    counts = np.array([np.sum(species == s) for s in range(len(shift))], np.float64)
    residual = dataset.energies - counts @ np.asarray(shift, np.float64)
    return max(float(np.std(residual)) / np.sqrt(max(int(np.sum(species >= 0)), 1)), 1.0)


def _frame_fn(energy_fn, template):
    """``(params, x, box) -> (E, F)`` for one frame, its table rebuilt from ``template``."""
    def one(params, x, box):
        nb = rebuild_neighbors(template, x, box) if isinstance(template, Neighbors) else template
        e, g = jax.value_and_grad(energy_fn, argnums=1)(params, x, box, nb)
        return e, -g

    return one


def _batched(energy_fn, template, periodic: bool):
    return jax.vmap(_frame_fn(energy_fn, template), in_axes=(None, 0, 0 if periodic else None))


def make_loss(energy_fn, template, n_atoms: int, energy_weight: float, force_weight: float, periodic: bool = False):
    """``loss(params, positions, energies, forces, boxes) -> scalar`` (the loss above; pure, jit-able)."""
    batched = _batched(energy_fn, template, periodic)

    def loss(params, positions, energies, forces, boxes=None):
        e, f = batched(params, positions, boxes)
        e_term = jnp.mean(((e - energies) / n_atoms) ** 2)
        f_term = jnp.mean(jnp.sum((f - forces) ** 2, axis=-1))
        return energy_weight * e_term + force_weight * f_term

    return loss


def evaluate(params, energy_fn, dataset: ds.Dataset, template=None, chunk: int = 64) -> dict:
    """Energy MAE [kJ/mol] and force RMSE [kJ/mol/nm] of a model on ``dataset`` (jitted, chunked)."""
    if template is None:
        template = ds.table_for_frames(energy_fn.neighbor_list, dataset.positions, dataset.boxes)
    fn = jax.jit(_batched(energy_fn, template, dataset.boxes is not None))
    return _metrics(fn, params, dataset, chunk)


def _metrics(fn, params, dataset: ds.Dataset, chunk: int = 64) -> dict:
    abs_e, sq_f = 0.0, 0.0
    for lo in range(0, len(dataset), chunk):
        box = None if dataset.boxes is None else jnp.asarray(dataset.boxes[lo:lo + chunk])
        e, f = fn(params, jnp.asarray(dataset.positions[lo:lo + chunk]), box)
        abs_e += float(np.sum(np.abs(np.asarray(e, np.float64) - dataset.energies[lo:lo + chunk])))
        sq_f += float(np.sum((np.asarray(f, np.float64) - dataset.forces[lo:lo + chunk]) ** 2))
    return {"energy_mae_kjmol": abs_e / len(dataset), "force_rmse_kjmolnm": float(np.sqrt(sq_f / dataset.forces.size))}


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns.

    Attributes:
        params: the trained parameters.
        history: rows ``{step, train_loss, val_energy_mae_kjmol, val_force_rmse_kjmolnm}``
            (validation NaN without a validation set).
        opt_state: the final optimizer state.
        wall_seconds: wall time of the loop [s].
    """

    params: object
    history: list
    opt_state: object
    wall_seconds: float


def train(params, energy_fn, train_set: ds.Dataset, validation: ds.Dataset | None = None,
          config: TrainConfig | None = None, *, out=None, resume: bool = False,
          progress: bool | None = None) -> TrainResult:
    """Train ``params`` of ``energy_fn`` by energy and force matching.

    Args:
        params: initial parameters (e.g. from ``potentials.neural.schnet``).
        energy_fn: ``energy_fn(params, positions, box, neighbors)`` with ``neighbor_list``.
        train_set: training frames (one element list shared by all frames).
        validation: held-out frames for the metrics (or None).
        config: ``TrainConfig``.
        out: folder for ``metrics.csv`` and ``checkpoint/`` (None: write nothing).
        resume: continue from ``out/checkpoint`` (the same config and data).
        progress: tqdm progress bar (None: only on a terminal).

    Returns:
        ``TrainResult``.
    """
    cfg = config or TrainConfig()
    if resume and out is None:
        raise InputError("resume=True needs out= (the folder holding checkpoint/)")
    if cfg.checkpoint_every and out is None:
        raise InputError("checkpoint_every needs out= (the folder for checkpoint/)")
    if len(train_set) < 1:
        raise InputError("the training set is empty")
    periodic = train_set.boxes is not None
    frames = train_set if validation is None else train_set.concatenate(validation)
    template = ds.table_for_frames(energy_fn.neighbor_list, frames.positions, frames.boxes)
    loss = make_loss(energy_fn, template, train_set.n_atoms, cfg.energy_weight, cfg.force_weight, periodic)
    opt = make_optimizer(cfg)
    eval_fn = jax.jit(_batched(energy_fn, template, periodic))

    @jax.jit
    def step_fn(p, s, x, e, f, b):
        value, grads = jax.value_and_grad(loss)(p, x, e, f, b)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    opt_state = opt.init(params)
    start, history = 0, []
    if resume and find_checkpoint(out) is not None:
        saved, meta = restore_checkpoint(out, like={"params": params, "opt_state": opt_state})
        params, opt_state = saved["params"], saved["opt_state"]
        start, history = int(meta["step"]), list(meta["history"])
    bs = min(int(cfg.batch_size), len(train_set))

    def checkpoint(step):
        save_checkpoint(out, {"params": params, "opt_state": opt_state},
                        {"step": step, "history": history, "config": dataclasses.asdict(cfg)})

    bar = tqdm(total=cfg.steps, initial=start, unit="step", disable=not _want_bar(progress), dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for step in range(start, cfg.steps):
            idx = ds.batch_indices(len(train_set), bs, step, cfg.seed)
            box = jnp.asarray(train_set.boxes[idx]) if periodic else None
            params, opt_state, value = step_fn(params, opt_state, jnp.asarray(train_set.positions[idx]),
                                               jnp.asarray(train_set.energies[idx]),
                                               jnp.asarray(train_set.forces[idx]), box)
            done = step + 1
            if done % cfg.validate_every == 0 or done == cfg.steps:
                value = float(value)
                if not np.isfinite(value):
                    raise InputError(f"step {done}: the loss became {value}; lower learning_rate")
                row = {"step": done, "train_loss": value, "val_energy_mae_kjmol": float("nan"),
                       "val_force_rmse_kjmolnm": float("nan")}
                if validation is not None:
                    m = _metrics(eval_fn, params, validation)
                    row.update(val_energy_mae_kjmol=m["energy_mae_kjmol"], val_force_rmse_kjmolnm=m["force_rmse_kjmolnm"])
                history.append(row)
                bar.set_postfix(loss=f"{value:.4g}", val_f_rmse=f"{row['val_force_rmse_kjmolnm']:.4g}")
                if out is not None:
                    write_metrics(os.path.join(out, METRICS_FILE), history)
            if out is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                checkpoint(done)
            bar.update(1)
    finally:
        bar.close()
    jax.block_until_ready(params)
    wall = time.perf_counter() - t0
    if out is not None:
        checkpoint(cfg.steps)
    return TrainResult(params, history, opt_state, wall)


def _want_bar(progress):
    if progress is not None:
        return bool(progress)

    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def write_metrics(path, history) -> None:
    """Write ``history`` rows to a CSV with the ``METRIC_COLUMNS``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(METRIC_COLUMNS)
        for row in history:
            w.writerow([row[c] if c == "step" else repr(float(row[c])) for c in METRIC_COLUMNS])

