"""Training data from simulation: frames with positions, energies and forces.

A :class:`Dataset` holds F frames of one atom count N in diffmd units::

    positions (F, N, 3) [nm]   energies (F,) [kJ/mol]   forces (F, N, 3) [kJ/mol/nm]
    elements (N,) or (F, N) atomic numbers   boxes (F, 3, 3) [nm] or None
    labels {name: (F,)} extra per-frame numbers (e.g. the pose, stability and interaction-energy
        columns of ``diffmd.workflows.pose_dataset``; units in the name: ``ligand_rmsd_nm``)

:func:`generate` runs an ensemble of R replicas of an Amber system (one batched
program, ``diffmd.ensemble``), records every replica's positions every ``every``
steps and labels each frame with the energy and forces of the force field
recomputed at exactly those positions (in ``label_precision``, double by
default), so the labels are ``-grad E`` at the frame whatever precision the
dynamics ran in.

Files:

- ``save_npz`` / ``load_npz``: the array format for large sets, one compressed
  ``.npz`` with ``format``/``version`` keys and the units in its metadata. An npz
  cannot be memory-mapped (its members are compressed); :func:`load_npz` reads
  the whole set. For sets larger than memory, write several files (shards) and
  train on each, or concatenate the subsets you need (``Dataset.concatenate``).
- ``write_extxyz`` / ``read_extxyz``: extended XYZ in ASE units (Angstrom, eV,
  eV/Angstrom), the exchange format of ML potentials; files made by ASE or other
  codes read back through ``ase.io`` (``diffmd.io._xyz``). Conversions use
  ``kernels.constants`` (``EV``, ``ANGSTROM``) and nothing else. Positions are
  written with 8 decimals in Angstrom (1e-9 nm), forces with 8 decimals in
  eV/Angstrom, energies with every digit.

``split`` makes disjoint, reproducible train/validation subsets; ``batch_indices``
and ``iterate_batches`` give the shuffled mini-batches the trainer uses (the
batch of step k depends on ``seed`` and k only, so a resumed run sees the same
batches).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels.errors import InputError
from ..io import format_extxyz, symbols_of
from ..io import read_extxyz as read_frames
from ..md import MAX_REALLOCATIONS, reallocate, resolve_physics
from ..kernels.neighbors import Neighbors, rebuild_neighbors
from .. import ensemble

FORMAT = "diffmd-dataset"
VERSION = 1
UNITS = {"positions": "nm", "energies": "kJ/mol", "forces": "kJ/mol/nm", "boxes": "nm"}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Frames of one atom count with reference energies and forces (host numpy arrays).

    Attributes:
        positions: (F, N, 3) [nm].
        energies: (F,) potential energies [kJ/mol].
        forces: (F, N, 3) forces [kJ/mol/nm].
        elements: (N,) atomic numbers shared by every frame, or (F, N) per frame.
        boxes: (F, 3, 3) periodic box vectors as rows [nm], or None (no periodicity).
        metadata: JSON-serialisable description (source, temperature, settings).
        labels: per-frame scalar labels ``{name: (F,) float64}`` (units in the name); stored as
            ``label:NAME`` arrays in npz and as comment-line keys in extended XYZ.
    """

    positions: np.ndarray
    energies: np.ndarray
    forces: np.ndarray
    elements: np.ndarray
    boxes: np.ndarray | None = None
    metadata: dict = dataclasses.field(default_factory=dict)
    labels: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        f = lambda a: np.asarray(a, np.float64)  # noqa: E731
        object.__setattr__(self, "positions", f(self.positions))
        object.__setattr__(self, "energies", f(self.energies).reshape(-1))
        object.__setattr__(self, "forces", f(self.forces))
        object.__setattr__(self, "elements", np.asarray(self.elements, np.int64))
        if self.boxes is not None:
            object.__setattr__(self, "boxes", f(self.boxes))
        n_frames = self.energies.shape[0]
        if self.positions.ndim != 3 or self.positions.shape[0] != n_frames or self.positions.shape[2] != 3:
            raise InputError(f"positions must be (F, N, 3) with F = {n_frames} energies, got {self.positions.shape}")
        if self.forces.shape != self.positions.shape:
            raise InputError(f"forces {self.forces.shape} must have the shape of positions {self.positions.shape}")
        n = self.positions.shape[1]
        if self.elements.shape not in ((n,), (n_frames, n)):
            raise InputError(f"elements must be ({n},) or ({n_frames}, {n}), got {self.elements.shape}")
        if self.boxes is not None and self.boxes.shape != (n_frames, 3, 3):
            raise InputError(f"boxes must be ({n_frames}, 3, 3) or None, got {self.boxes.shape}")
        for name in ("positions", "energies", "forces"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise InputError(f"the data set's {name} contain NaN or Inf")
        labels = {}
        for name, values in (self.labels or {}).items():
            values = np.asarray(values, np.float64)
            if values.shape != (n_frames,) or not str(name).isidentifier():
                raise InputError(f"label {name!r} must be an identifier with one number per frame ({n_frames},), "
                                 f"got shape {values.shape}")
            labels[str(name)] = values
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return int(self.energies.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[1])

    @property
    def shared_elements(self) -> np.ndarray | None:
        """(N,) atomic numbers if every frame has the same, else None."""
        if self.elements.ndim == 1:
            return self.elements
        if len(self) and np.all(self.elements == self.elements[:1]):
            return self.elements[0]
        return None

    def subset(self, index) -> "Dataset":
        """The frames ``index`` (integer array, slice or boolean mask) as a new ``Dataset``."""
        index = np.arange(len(self))[index]
        elements = self.elements if self.elements.ndim == 1 else self.elements[index]
        return Dataset(self.positions[index], self.energies[index], self.forces[index], elements,
                       None if self.boxes is None else self.boxes[index], dict(self.metadata),
                       {k: v[index] for k, v in self.labels.items()})

    def concatenate(self, other: "Dataset") -> "Dataset":
        """This set's frames followed by ``other``'s (same atom count)."""
        if other.n_atoms != self.n_atoms or (self.boxes is None) != (other.boxes is None):
            raise InputError("can only concatenate data sets with the same atom count and periodicity")
        if set(self.labels) != set(other.labels):
            raise InputError(f"can only concatenate data sets with the same labels, got {sorted(self.labels)} and "
                             f"{sorted(other.labels)}")
        if self.elements.ndim == 1 and other.elements.ndim == 1 and np.array_equal(self.elements, other.elements):
            elements = self.elements
        else:
            elements = np.concatenate([_per_frame(self), _per_frame(other)])
        return Dataset(np.concatenate([self.positions, other.positions]),
                       np.concatenate([self.energies, other.energies]),
                       np.concatenate([self.forces, other.forces]), elements,
                       None if self.boxes is None else np.concatenate([self.boxes, other.boxes]), dict(self.metadata),
                       {k: np.concatenate([v, other.labels[k]]) for k, v in self.labels.items()})


def _per_frame(ds: Dataset) -> np.ndarray:
    return np.broadcast_to(ds.elements, (len(ds), ds.n_atoms)) if ds.elements.ndim == 1 else ds.elements


# ----------------------------------------------------------------------------- files


def save_npz(dataset: Dataset, path) -> None:
    """Write ``dataset`` as a compressed ``.npz`` (format version and units in ``metadata``).

    Arrays are stored in float64, so a round trip is exact.
    """
    meta = {"format": FORMAT, "version": VERSION, "units": UNITS, "metadata": dataset.metadata}
    arrays = dict(positions=dataset.positions, energies=dataset.energies, forces=dataset.forces,
                  elements=dataset.elements, metadata=np.array(json.dumps(meta, default=_json_default)))
    if dataset.boxes is not None:
        arrays["boxes"] = dataset.boxes
    arrays.update({f"label:{k}": v for k, v in dataset.labels.items()})
    with open(os.fspath(path), "wb") as fh:  # a file object: numpy would otherwise append ".npz"
        np.savez_compressed(fh, **arrays)


def load_npz(path) -> Dataset:
    """Read a data set written by :func:`save_npz`.

    Raises:
        InputError: missing file, not a diffmd data set, or another format version.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such data set file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from exc
    if "metadata" not in arrays:
        raise InputError(f"{path}: not a diffmd data set (no 'metadata' entry); write it with save_npz")
    meta = json.loads(str(arrays["metadata"]))
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise InputError(f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}, expected "
                         f"{FORMAT!r} version {VERSION}")
    if meta.get("units") != UNITS:
        raise InputError(f"{path}: units {meta.get('units')} differ from diffmd's {UNITS}")
    missing = [k for k in ("positions", "energies", "forces", "elements") if k not in arrays]
    if missing:
        raise InputError(f"{path}: missing arrays {missing}")
    labels = {k[len("label:"):]: v for k, v in arrays.items() if k.startswith("label:")}
    return Dataset(arrays["positions"], arrays["energies"], arrays["forces"], arrays["elements"],
                   arrays.get("boxes"), meta.get("metadata", {}), labels)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_extxyz(dataset: Dataset, path) -> None:
    """Write every frame as extended XYZ (ASE units; see the module docstring)."""
    elements = _per_frame(dataset)
    with open(os.fspath(path), "w", encoding="ascii") as fh:
        for k in range(len(dataset)):
            fh.write(format_extxyz(symbols_of(elements[k]), dataset.positions[k],
                                   None if dataset.boxes is None else dataset.boxes[k],
                                   energy=float(dataset.energies[k]), forces=dataset.forces[k],
                                   info={n: float(v[k]) for n, v in dataset.labels.items()}))


def read_extxyz(path, index: str = ":", *, energy_key: str = "energy", forces_key: str = "forces",
                labels=None) -> Dataset:
    """Read extended XYZ frames (from diffmd, ASE or elsewhere; ASE units) as a ``Dataset``.

    Args:
        path: the file.
        index: frames in ``ase.io.read`` syntax (``":"`` all, ``"::10"`` every tenth).
        energy_key: comment-line key of the energy (e.g. ``"REF_energy"``).
        forces_key: per-atom property of the forces (e.g. ``"REF_forces"``).
        labels: comment-line keys to read as per-frame labels; default: every numeric key that
            every frame has (those ``write_extxyz`` wrote from ``Dataset.labels``).

    Raises:
        InputError: unreadable file, frames without energy or forces, or frames of
        different atom counts.
    """
    frames = read_frames(path, index, energy_key=energy_key, forces_key=forces_key)
    if not frames:
        raise InputError(f"{path}: no frames")
    sizes = {len(fr.elements) for fr in frames}
    if len(sizes) > 1:
        raise InputError(f"{path}: frames have different atom counts {sorted(sizes)}; a Dataset holds one count")
    for k, fr in enumerate(frames):
        if fr.energy is None or fr.forces is None:
            raise InputError(f"{path}: frame {k} has no {energy_key!r} or no {forces_key!r} (pass energy_key= / "
                             "forces_key= if the file names them differently)")
    periodic = [fr.box is not None and bool(np.all(fr.pbc)) for fr in frames]
    if any(periodic) and not all(periodic):
        raise InputError(f"{path}: some frames are periodic and some are not")
    elements = np.stack([fr.elements for fr in frames])
    if np.all(elements == elements[:1]):
        elements = elements[0]
    numeric = (int, float, np.integer, np.floating)
    if labels is None:
        labels = [k for k, v in frames[0].info.items()
                  if isinstance(v, numeric) and not isinstance(v, bool) and all(k in fr.info for fr in frames)]
    missing = [k for k in labels if any(k not in fr.info for fr in frames)]
    if missing:
        raise InputError(f"{path}: label(s) {missing} missing from some frames")
    return Dataset(np.stack([fr.positions for fr in frames]), np.array([fr.energy for fr in frames]),
                   np.stack([fr.forces for fr in frames]), elements,
                   np.stack([fr.box for fr in frames]) if all(periodic) else None,
                   {"source": os.fspath(path)}, {k: [float(fr.info[k]) for fr in frames] for k in labels})


def load(path, **kwargs) -> Dataset:
    """``load_npz`` for ``.npz`` files, ``read_extxyz`` for anything else (``.xyz``, ``.extxyz``)."""
    if os.fspath(path).endswith(".npz"):
        return load_npz(path)
    return read_extxyz(path, **kwargs)


# ----------------------------------------------------------------------------- splits and batches


def split(dataset: Dataset, validation_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Disjoint random (train, validation) subsets; the same ``seed`` gives the same split.

    Args:
        dataset: the frames.
        validation_fraction: share of frames for validation, in (0, 1); at least one
            frame goes to each side.
        seed: seed of the permutation.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise InputError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    n = len(dataset)
    if n < 2:
        raise InputError(f"cannot split {n} frame(s) into training and validation sets")
    n_val = min(max(int(round(validation_fraction * n)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return dataset.subset(np.sort(perm[n_val:])), dataset.subset(np.sort(perm[:n_val]))


def batch_indices(n_frames: int, batch_size: int, step: int, seed: int = 0) -> np.ndarray:
    """Frame indices of mini-batch ``step``: epochs of shuffled, disjoint batches.

    Epoch e is the permutation ``default_rng((seed, e))``; each epoch holds
    ``n_frames // batch_size`` full batches (the remainder waits for a later
    shuffle). Depends on ``(seed, step)`` only, so resumed training sees the same batches.
    """
    batch_size = min(int(batch_size), int(n_frames))
    per_epoch = n_frames // batch_size
    epoch, k = divmod(int(step), per_epoch)
    perm = np.random.default_rng((int(seed), epoch)).permutation(n_frames)
    return perm[k * batch_size:(k + 1) * batch_size]


def iterate_batches(dataset: Dataset, batch_size: int, *, seed: int = 0, start: int = 0,
                    steps: int | None = None) -> Iterator[Dataset]:
    """Yield mini-batches (``Dataset`` subsets) for steps ``start``, ``start + 1``, ... (see ``batch_indices``).

    ``steps=None`` yields one epoch from ``start``.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size!r}")
    if steps is None:
        steps = max(len(dataset) // min(batch_size, len(dataset)), 1)
    for step in range(start, start + steps):
        yield dataset.subset(batch_indices(len(dataset), batch_size, step, seed))


# ----------------------------------------------------------------------------- neighbor tables for frames


def table_for_frames(make_table, positions, boxes=None, chunk: int = 256):
    """One neighbor-table layout valid for every frame (host), for jitted per-frame rebuilds.

    Allocates a table at the first frame with ``make_table(positions, box)`` (e.g. a
    model's ``energy_fn.neighbor_list``), rebuilds it at every frame in jitted chunks
    and, while any frame overflows, re-allocates at the frame that needed the most.

    Returns:
        A ``Neighbors`` template (or whatever ``make_table`` returns when it is not a
        cutoff table) such that ``rebuild_neighbors(template, positions[k], box[k])``
        fits every frame k.
    """
    positions = np.asarray(positions)
    table = make_table(positions[0], None if boxes is None else boxes[0])
    if not isinstance(table, Neighbors) or table.dense:
        return table
    for attempt in range(MAX_REALLOCATIONS):
        need = np.zeros(len(positions), np.int64)
        over = np.zeros(len(positions), bool)
        build = jax.jit(jax.vmap(rebuild_neighbors, in_axes=(None, 0, None if boxes is None else 0)))
        for lo in range(0, len(positions), chunk):
            b = None if boxes is None else jnp.asarray(boxes[lo:lo + chunk])
            nb = build(table, jnp.asarray(positions[lo:lo + chunk]), b)
            need[lo:lo + chunk] = np.asarray(nb.needed)
            over[lo:lo + chunk] = np.asarray(nb.overflow)
        if not over.any():
            return table
        worst = int(np.argmax(need))
        grown = dataclasses.replace(table, needed=jnp.asarray(int(need.max()), jnp.int32))
        table = reallocate(grown, positions[worst], None if boxes is None else boxes[worst], attempt)
    raise InputError("could not size one neighbor table for every frame (do the frames hold very different "
                     "densities?)")


# ----------------------------------------------------------------------------- generation


class _FrameRecorder:
    """An ensemble "move" that changes nothing and records every member's positions after a chunk."""

    name = "frames"

    def __init__(self, every: int, skip_through: int):
        self.every, self.skip_through, self.frames = int(every), int(skip_through), []

    def __call__(self, ens, step: int):
        if step > self.skip_through:
            self.frames.append(np.asarray(ens.carry.state.positions, np.float64))
        return ens


def label_frames(energy_fn, params, positions, boxes=None, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Energies and forces of an energy model at given frames (jitted, vmapped over frames).

    Args:
        energy_fn, params: the model (``energy_fn(params, positions, box, neighbors)``).
        positions: (F, N, 3) [nm].
        boxes: (F, 3, 3) [nm] or None.
        chunk: frames per jitted call.

    Returns:
        ``(energies (F,) [kJ/mol], forces (F, N, 3) [kJ/mol/nm])`` as float64 numpy arrays,
        forces being ``-grad`` of the energy at each frame (its own neighbor table).
    """
    positions = np.asarray(positions)
    template = table_for_frames(energy_fn.neighbor_list, positions, boxes, chunk)
    box_axis = None if boxes is None else 0

    def one(x, box):
        nb = rebuild_neighbors(template, x, box) if isinstance(template, Neighbors) else template
        e, g = jax.value_and_grad(energy_fn, argnums=1)(params, x, box, nb)
        return e, -g

    fn = jax.jit(jax.vmap(one, in_axes=(0, box_axis)))
    energies, forces = [], []
    for lo in range(0, len(positions), chunk):
        e, f = fn(jnp.asarray(positions[lo:lo + chunk]), None if boxes is None else jnp.asarray(boxes[lo:lo + chunk]))
        energies.append(np.asarray(e, np.float64))
        forces.append(np.asarray(f, np.float64))
    return np.concatenate(energies), np.concatenate(forces)


def generate(system, n_frames: int, every: int, *, replicas: int = 1, temperature=300.0, seed: int = 0,
             equilibrate: int = 0, dt: float = 0.002, friction: float = 1.0, constraints: str | None = None,
             nonbonded: str | None = None, cutoff: float | None = None, implicit_solvent: str | None = None,
             precision: str = "mixed", label_precision: str = "double", minimize: bool = True,
             progress: bool | None = None) -> Dataset:
    """Frames from Langevin dynamics of an Amber system, labelled with its energies and forces.

    ``replicas`` copies run as one batched ensemble (``diffmd.ensemble``), each
    with its own seed (and temperature, if a list is given). After ``equilibrate``
    steps (rounded up to a multiple of ``every``), every replica's positions are
    recorded every ``every`` steps until ``n_frames`` frames exist (taken in time
    order, all replicas at each time). Each frame's energy and forces are then
    recomputed with ``system.energy_fn(..., precision=label_precision)`` at the
    recorded positions: the labels are exactly ``-grad E`` there.

    Args:
        system: a ``diffmd.System`` with positions.
        n_frames: frames to return (F).
        every: steps between frames of one replica (decorrelation).
        replicas: replicas run together (R); each contributes ``ceil(F / R)`` frames at most.
        temperature: [K], one value or one per replica (higher samples more conformations).
        seed: base seed (replica r uses ``seed + r``).
        equilibrate: steps run before the first frame.
        dt, friction, constraints, nonbonded, cutoff, implicit_solvent, precision, minimize:
            as ``diffmd.simulate`` (``constraints`` applies to the dynamics; the labels are
            the unconstrained force field's forces). Left out (None), they are the
            system's own: an OpenMM System's physics, else H-bond constraints, no cutoff.
        label_precision: precision of the labels (``"double"`` needs ``jax_enable_x64``).
        progress: progress bar (None: only on a terminal).

    Returns:
        ``Dataset`` (boxes set when the run is periodic).
    """
    for name, value, low in (("n_frames", n_frames, 1), ("every", every, 1), ("replicas", replicas, 1),
                             ("equilibrate", equilibrate, 0)):
        if int(value) != value or value < low:
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    if system.positions is None:
        raise InputError("generate needs a system with positions (load_amber(prmtop, coordinates))")
    per_replica = math.ceil(n_frames / replicas)
    skip = math.ceil(equilibrate / every) * every
    ens = ensemble.prepare(system, replicas=int(replicas), temperature=temperature, seed=seed, dt=dt,
                           friction=friction, constraints=constraints, nonbonded=nonbonded, cutoff=cutoff,
                           implicit_solvent=implicit_solvent, precision=precision, minimize=minimize)
    recorder = _FrameRecorder(every, skip)
    result = ensemble.simulate(ens, skip + per_replica * int(every), report_every=int(every), progress=progress,
                               moves=[recorder])
    positions = np.stack(recorder.frames)  # (K, R, N, 3), time-major
    positions = positions.reshape(-1, *positions.shape[2:])[: int(n_frames)]
    boxes = None
    if ens.box is not None:
        boxes = np.broadcast_to(np.asarray(ens.box, np.float64)[:1], (len(positions), 3, 3)).copy()
    run = resolve_physics(system, constraints=constraints, nonbonded=nonbonded, cutoff=cutoff,
                          implicit_solvent=implicit_solvent)
    params, energy_fn = system.energy_fn(nonbonded=nonbonded, cutoff=cutoff, implicit_solvent=implicit_solvent,
                                         precision=label_precision)
    energies, forces = label_frames(energy_fn, params, positions, boxes)
    temps = [m.temperature for m in ens.members]
    metadata = {"source": str(getattr(system, "source", "")), "generator": "diffmd.datasets.generate",
                "temperature_k": temps, "replicas": int(replicas), "every_steps": int(every), "dt_ps": float(dt),
                "equilibrate_steps": int(skip), "seed": int(seed), "constraints": run["constraints"],
                "nonbonded": run["nonbonded"],
                "cutoff_nm": None if run["nonbonded"] == "nocutoff" else float(run["cutoff"]),
                "implicit_solvent": run["implicit_solvent"], "dynamics_precision": precision,
                "label_precision": label_precision, "ns_per_day_aggregate": float(result.ns_per_day)}
    return Dataset(positions, energies, forces, np.asarray(system.topology.elements), boxes, metadata)
