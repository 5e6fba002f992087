"""Training from a TOML config file: ``diffmd train CONFIG`` and ``diffmd.train.run_config``.

Sections (every key optional unless noted; unknown keys are errors)::

    [data]              path = "frames.npz" | "frames.xyz"   (or a [data.generate] table)
                        energy_key, forces_key               (extended XYZ only)
    [data.generate]     system = "alanine-dipeptide" (bundled) or prmtop = ..., coords = ...
                        frames, every, replicas, temperature, equilibrate, seed, dt, friction,
                        constraints, minimize, save (file name in the output folder)
    [model]             kind = "schnet" | "painn", cutoff [nm], features, interactions, n_rbf,
                        precision, skin [nm], seed, energy_scale (kJ/mol or "auto")
    [train]             the fields of ``diffmd.train.TrainConfig``
    [output]            folder, resume, progress

Relative paths are relative to the config file's folder. Outputs in the folder:
``metrics.csv``, ``checkpoint/``, ``params.msgpack`` (final flax parameters) and
``model.json`` (what :func:`load_model` needs to rebuild the model, and the atomic numbers
of the molecule it was trained on, ``elements``).
"""

from __future__ import annotations

import dataclasses
import json
import os

from . import _datasets as ds
from ..kernels.errors import InputError
from ..data import alanine_dipeptide, cb7_b2, t4_lysozyme
from ..io import load_amber
from ._train import TrainConfig
import tomllib
from ..potentials.neural import species_from_elements
from ._train import energy_scale, fit_energy_shift
import jax
from ..potentials.neural import painn, schnet
import jax.numpy as jnp
from ._train import evaluate, train
from flax import serialization

MODEL_BUILDERS = ("schnet", "painn")
_GENERATE_KEYS = {"system", "prmtop", "coords", "frames", "every", "replicas", "temperature", "equilibrate", "seed",
                  "dt", "friction", "constraints", "minimize", "save"}
_MODEL_KEYS = {"kind", "cutoff", "features", "interactions", "n_rbf", "precision", "skin", "seed", "energy_scale"}
_BUNDLED = {"alanine-dipeptide": alanine_dipeptide, "t4-lysozyme-l99a": t4_lysozyme, "cb7-b2": cb7_b2}


def _check_keys(table, valid, where: str):
    if not isinstance(table, dict):
        raise InputError(f"{where} must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(valid))
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(sorted(valid))}")


def validate_config(config: dict, base: str = ".") -> dict:
    """Check a config dict (as read from TOML) and resolve its paths against ``base``.

    Raises:
        InputError: an unknown section or key (naming it and listing the valid ones), a
        missing data source, or an invalid value.
    """
    _check_keys(config, {"data", "model", "train", "output"}, "the config (top level)")
    data = dict(config.get("data", {}))
    _check_keys(data, {"path", "generate", "energy_key", "forces_key"}, "[data]")
    if ("path" in data) == ("generate" in data):
        raise InputError("[data] needs exactly one of path = \"frames.npz|.xyz\" or a [data.generate] table")
    if "path" in data:
        data["path"] = os.path.join(base, data["path"])
    else:
        gen = dict(data["generate"])
        _check_keys(gen, _GENERATE_KEYS, "[data.generate]")
        if "system" in gen:
            if gen["system"] not in _BUNDLED:
                raise InputError(f"[data.generate] system {gen['system']!r} is not bundled; choose one of "
                                 f"{', '.join(_BUNDLED)} or give prmtop and coords")
        elif not ("prmtop" in gen and "coords" in gen):
            raise InputError("[data.generate] needs system = \"alanine-dipeptide\" or both prmtop and coords")
        else:
            gen["prmtop"], gen["coords"] = (os.path.join(base, gen["prmtop"]), os.path.join(base, gen["coords"]))
        data["generate"] = gen
    model = dict(config.get("model", {}))
    _check_keys(model, _MODEL_KEYS, "[model]")
    if model.get("kind", "schnet") not in MODEL_BUILDERS:
        raise InputError(f"[model] kind must be one of {', '.join(MODEL_BUILDERS)}, got {model['kind']!r}")
    train = dict(config.get("train", {}))
    _check_keys(train, {f.name for f in dataclasses.fields(TrainConfig)}, "[train]")
    output = dict(config.get("output", {}))
    _check_keys(output, {"folder", "resume", "progress"}, "[output]")
    output["folder"] = os.path.join(base, output.get("folder", "train-out"))
    return {"data": data, "model": model, "train": TrainConfig(**train), "output": output}


def load_config(path) -> dict:
    """Read and validate a TOML training config (see the module docstring).

    Returns:
        ``{"data": dict, "model": dict, "train": TrainConfig, "output": dict}`` with
        paths resolved against the file's folder.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from exc
    try:
        return validate_config(raw, os.path.dirname(os.path.abspath(path)))
    except (InputError, TypeError) as exc:
        raise InputError(f"{path}: {exc}") from exc


def build_model(model: dict, dataset: ds.Dataset):
    """``(params, energy_fn, spec)`` for a ``[model]`` table, the energy shift fitted to ``dataset``.

    ``spec`` (JSON-serialisable) records everything :func:`load_model` needs.
    """
    elements = dataset.shared_elements
    if elements is None:
        raise InputError("training needs every frame to have the same elements (one molecule or system)")
    species, table = species_from_elements(elements)
    shift = fit_energy_shift(dataset, species, len(table))
    scale = model.get("energy_scale", "auto")
    scale = energy_scale(dataset, species, shift) if scale == "auto" else float(scale)
    spec = {"kind": model.get("kind", "schnet"), "cutoff": float(model.get("cutoff", 0.5)),
            "features": int(model.get("features", 64)), "interactions": int(model.get("interactions", 3)),
            "n_rbf": int(model.get("n_rbf", 20)), "precision": model.get("precision", "single"),
            "skin": float(model.get("skin", 0.1)), "seed": int(model.get("seed", 0)),
            "species_table": [int(z) for z in table], "energy_shift": [float(s) for s in shift],
            "energy_scale": float(scale), "training_energy_per_atom_kjmol": training_energy_range(dataset),
            "elements": [int(z) for z in elements]}
    params, fn = _build(spec, species)
    return params, fn, spec


def training_energy_range(dataset: ds.Dataset) -> list[float]:
    """``[low, high]`` potential energy per atom [kJ/mol] of a data set's frames (recorded in
    ``model.json``, so a run can tell when the model is evaluated outside its training data)."""
    per_atom = dataset.energies / dataset.positions.shape[1]
    return [float(per_atom.min()), float(per_atom.max())]


def _build(spec: dict, species):
    builder = schnet if spec["kind"] == "schnet" else painn
    return builder(species, cutoff=spec["cutoff"], features=spec["features"], interactions=spec["interactions"],
                   n_rbf=spec["n_rbf"], n_species=len(spec["species_table"]), energy_shift=spec["energy_shift"],
                   energy_scale=spec["energy_scale"], precision=spec["precision"], skin=spec["skin"],
                   key=jax.random.PRNGKey(spec["seed"]))


def save_model(folder, params, spec: dict) -> None:
    """Write ``params.msgpack`` (flax serialization) and ``model.json`` into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "params.msgpack"), "wb") as fh:
        fh.write(serialization.to_bytes(params))
    with open(os.path.join(folder, "model.json"), "w") as fh:
        json.dump(spec, fh, indent=1)
        fh.write("\n")


def load_model(folder, elements):
    """``(params, energy_fn)`` of a model saved by training, for a system with atomic numbers ``elements``."""
    with open(os.path.join(folder, "model.json")) as fh:
        spec = json.load(fh)
    species, _ = species_from_elements(elements, table=spec["species_table"])
    template, fn = _build(spec, species)
    with open(os.path.join(folder, "params.msgpack"), "rb") as fh:
        params = serialization.from_bytes(template, fh.read())
    span = spec.get("training_energy_per_atom_kjmol")  # absent in models saved before it was recorded
    if span is not None:
        fn = dataclasses.replace(fn, training_energy_range=(float(span[0]), float(span[1])))
    # from_bytes gives numpy leaves, which cannot be indexed by traced species inside jit
    return jax.tree_util.tree_map(jnp.asarray, params), fn


def _dataset(data: dict, folder: str, progress) -> ds.Dataset:
    if "path" in data:
        keys = {k: data[k] for k in ("energy_key", "forces_key") if k in data}
        if data["path"].endswith(".npz") and keys:
            raise InputError("[data] energy_key/forces_key apply to extended XYZ files only")
        return ds.load(data["path"], **keys)
    gen = dict(data["generate"])
    if "system" in gen:
        system = load_amber(*_BUNDLED[gen.pop("system")]())
    else:
        system = load_amber(gen.pop("prmtop"), gen.pop("coords"))
    save = gen.pop("save", None)
    n_frames, every = int(gen.pop("frames", 500)), int(gen.pop("every", 50))
    dataset = ds.generate(system, n_frames, every, progress=progress, **gen)
    if save:
        os.makedirs(folder, exist_ok=True)
        ds.save_npz(dataset, os.path.join(folder, save))
    return dataset


def run_config(config, *, progress: bool | None = None) -> dict:
    """Run a training config (a path or a ``load_config`` dict): data, split, model, training, outputs.

    Returns:
        A summary dict: frames, validation metrics of the final model, wall time, output folder.
    """
    cfg = load_config(config) if isinstance(config, (str, os.PathLike)) else config
    folder, output = cfg["output"]["folder"], cfg["output"]
    progress = output.get("progress") if progress is None else progress
    tc = cfg["train"]
    dataset = _dataset(cfg["data"], folder, progress)
    train_set, val_set = ds.split(dataset, tc.validation_fraction, tc.seed)
    params, energy_fn, spec = build_model(cfg["model"], train_set)
    result = train(params, energy_fn, train_set, val_set, tc, out=folder, resume=bool(output.get("resume", False)),
                   progress=progress)
    save_model(folder, result.params, spec)
    final = evaluate(result.params, energy_fn, val_set)
    summary = {"frames": len(dataset), "train_frames": len(train_set), "validation_frames": len(val_set),
               "steps": tc.steps, "val_energy_mae_kjmol": final["energy_mae_kjmol"],
               "val_force_rmse_kjmolnm": final["force_rmse_kjmolnm"], "train_seconds": result.wall_seconds,
               "output": folder}
    with open(os.path.join(folder, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
        fh.write("\n")
    return summary
