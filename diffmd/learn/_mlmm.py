"""Hybrid ML/MM from a trained model folder: ``mlmm_model(folder, system, ml_atoms, ...)``.

The neural model that ``diffmd train`` saved in ``folder`` describes the ML atoms (a ligand,
optionally pocket residues) and the system's Amber force field the rest, with the ML region's
internal MM terms removed (``diffmd.potentials.mlmm``). This is what ``diffmd run --model DIR
--ml-atoms SELECTION`` runs.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np

from ..io import symbols_of
from ..kernels.errors import InputError
from ..potentials.mlmm import mlmm_energy
from ._train_config import load_model

def _formula(elements) -> str:
    """``C12 H18 N2``-style composition (elements in atomic-number order)."""
    counts = Counter(int(z) for z in elements)
    return " ".join(f"{symbols_of([z])[0]}{counts[z]}" for z in sorted(counts))


def _model_spec(folder) -> dict:
    path = os.path.join(os.fspath(folder), "model.json")
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError(f"{folder}: no model.json there; give the folder 'diffmd train' wrote (its [output] "
                         "folder)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc


def check_ml_elements(folder, elements) -> None:
    """Check that the model in ``folder`` was trained on the ML atoms' elements (host).

    Models record the atomic numbers of the molecule they were trained on (``elements`` in
    ``model.json``): the ML region must hold the same atoms (count and elements, in any order).
    Older models record only their species table: every ML element must be in it.

    Raises:
        InputError: no model.json, or a different atom count or composition (both named).
    """
    spec = _model_spec(folder)
    elements = np.asarray(elements, np.int64).reshape(-1)
    trained = spec.get("elements")
    if trained is not None:
        if len(trained) != len(elements) or Counter(trained) != Counter(int(z) for z in elements):
            raise InputError(f"the model in {folder} was trained on {len(trained)} atoms ({_formula(trained)}) but the "
                             f"ML selection has {len(elements)} ({_formula(elements)}): select the molecule the "
                             "model was trained on, or train a model on the selected atoms")
        return
    table = {int(z) for z in spec.get("species_table", [])}
    missing = sorted({int(z) for z in elements} - table)
    if missing:
        raise InputError(f"the model in {folder} knows the elements {', '.join(symbols_of(sorted(table)))} but the "
                         f"ML selection also holds {', '.join(symbols_of(missing))}: select the atoms the model "
                         "was trained on")


def mlmm_model(folder, system, ml_atoms, *, nonbonded: str = "nocutoff", cutoff: float | None = 1.0,
               implicit_solvent: str | None = None, precision: str = "mixed", lambda_interpolate: float = 1.0):
    """``(MLMMParams, MLMMEnergy)`` of ``system`` with the trained model in ``folder`` on ``ml_atoms``.

    Args:
        folder: a model folder written by ``diffmd train`` (``model.json``, ``params.msgpack``).
        system: the whole ``diffmd.System`` (Amber; its force field describes the MM part).
        ml_atoms: 0-based indices of the ML atoms (any order; used sorted).
        nonbonded, cutoff [nm], implicit_solvent, precision: the Amber model's settings,
            as ``System.energy_fn`` takes them (the neural model keeps its own precision).
        lambda_interpolate: 1 = ML/MM, 0 = pure MM (a traced parameter of the result).

    Raises:
        InputError: the model was trained on other atoms than the selection, or a bad selection
        or setting (see ``diffmd.potentials.mlmm.mlmm_energy``).
    """
    atoms = np.unique(np.asarray(ml_atoms, np.int64).reshape(-1))
    if atoms.size and (atoms[0] < 0 or atoms[-1] >= system.n_atoms):
        raise InputError(f"ML atom indices must lie in [0, {system.n_atoms}), got {atoms[0]}..{atoms[-1]}")
    elements = np.asarray(system.topology.elements)[atoms]
    check_ml_elements(folder, elements)
    neural = load_model(folder, elements)
    mm = system.energy_fn(nonbonded=nonbonded, cutoff=None if nonbonded == "nocutoff" else cutoff,
                          implicit_solvent=implicit_solvent, precision=precision)
    return mlmm_energy(mm, neural, atoms, lambda_interpolate=lambda_interpolate)
