"""Protein-ligand runs as one ML data set: frames, force-field energies and forces, and the per-frame
pose / stability / interaction-energy labels of ``analyse`` (``diffmd.datasets.Dataset.labels``)."""

from __future__ import annotations

import os

import numpy as np

from ..kernels.errors import InputError
from ._analysis import analyse_run

#: numeric ``analysis.csv`` columns carried as labels (the residue and hydrogen-bond lists are text)
LABEL_COLUMNS = ("step", "time_ps", "ligand_rmsd_nm", "ligand_displacement_nm", "n_contact_pairs",
                 "n_contact_residues", "n_hbonds", "e_int_kj_mol", "e_int_coulomb_kj_mol", "e_int_lj_kj_mol",
                 "e_int_gb_kj_mol", "bound", "stayed_bound")


def _boxes(cells, path):
    if cells is None:
        return None
    if not np.allclose(cells[:, 3:], 90.0, atol=1e-4):
        raise InputError(f"{path}: a non-rectangular cell; pose_dataset handles rectangular boxes only")
    return np.stack([np.diag(c[:3]) for c in cells])


def pose_dataset(runs, systems, ligand: str = "LIG", *, nonbonded: str = "nocutoff", cutoff: float = 1.0,
                 implicit_solvent: str | None = None, label_precision: str = "double", align: str = "pocket"):
    """One ``Dataset`` from a batch of protein-ligand runs (e.g. several poses of one ligand).

    Each run folder's ``trajectory.dcd`` frames are analysed (``analyse_run``: its ``analysis.csv``,
    ``pocket_rmsf.csv`` and ``analysis.json`` are written there) and labelled with the force field's
    energy and forces at exactly those positions (``datasets.label_frames``, in ``label_precision``).

    Args:
        runs: run folders (``simulate(out=...)``/``diffmd run --out``), all with the same atom count.
        systems: the simulated ``System``, one for all runs or one per run.
        ligand: the ligand's residue name.
        nonbonded, cutoff, implicit_solvent: the force-field settings of the energy/force labels (and
            ``implicit_solvent`` the GB part of the interaction energy), as in the runs.
        label_precision: precision of the energies and forces.
        align: superposition for the pose labels (``pocket`` or ``protein``).

    Returns:
        ``diffmd.datasets.Dataset`` with ``labels``: ``member`` (index into ``runs``) and the numeric
        ``analysis.csv`` columns (``LABEL_COLUMNS``: RMSD, displacement, contacts, hydrogen bonds,
        interaction energies, bound flags).
    """
    from ..learn.datasets import Dataset, label_frames
    from ..io import read_dcd

    runs = [os.fspath(r) for r in runs]
    if not runs:
        raise InputError("pose_dataset needs at least one run folder")
    systems = list(systems) if isinstance(systems, (list, tuple)) else [systems] * len(runs)
    if len(systems) != len(runs):
        raise InputError(f"give one system for all runs or one per run: {len(systems)} systems, {len(runs)} runs")
    if len({s.n_atoms for s in systems}) > 1:
        raise InputError("the runs have different atom counts; a Dataset holds one count: build one data set per "
                         "ligand (pose_dataset per group of runs) and train on each")
    members = []
    for k, (run, system) in enumerate(zip(runs, systems)):
        result = analyse_run(run, system, ligand, align=align, implicit_solvent=implicit_solvent)
        positions, cells, _ = read_dcd(os.path.join(run, "trajectory.dcd"))
        boxes = _boxes(cells, run)
        params, energy_fn = system.energy_fn(nonbonded=nonbonded, cutoff=cutoff, implicit_solvent=implicit_solvent,
                                             precision=label_precision)
        energies, forces = label_frames(energy_fn, params, positions, boxes)
        labels = {c: np.asarray(result["columns"][c], np.float64) for c in LABEL_COLUMNS}
        labels["member"] = np.full(len(positions), float(k))
        members.append(Dataset(positions, energies, forces, np.asarray(system.topology.elements), boxes, {}, labels))
    data = members[0]
    for m in members[1:]:
        data = data.concatenate(m)
    metadata = {"generator": "diffmd.workflows.pose_dataset", "runs": [os.path.abspath(r) for r in runs],
                "ligand": ligand, "align": align, "nonbonded": nonbonded,
                "cutoff_nm": None if nonbonded == "nocutoff" else float(cutoff), "implicit_solvent": implicit_solvent,
                "label_precision": label_precision, "sources": [str(s.source) for s in systems]}
    return Dataset(data.positions, data.energies, data.forces, data.elements, data.boxes, metadata, data.labels)
