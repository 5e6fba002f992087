"""Per-frame analysis of a protein-ligand run: ``analyse`` on arrays, ``analyse_run`` on a run's folder
(``DIR/trajectory.dcd``) writing ``DIR/analysis.csv``, ``DIR/pocket_rmsf.csv`` and ``DIR/analysis.json``.

``analysis.csv`` has one row per trajectory frame (the run's reported frames), columns:

=========================  ==========================================================================
step, time_ps              the frame's step and time [ps]
ligand_rmsd_nm             ligand heavy-atom RMSD from the first frame after superposing the pocket's
                           C-alpha atoms (``align="pocket"``; ``"protein"``: all C-alphas) [nm]
ligand_displacement_nm     distance the ligand's heavy-atom centroid moved, same superposition [nm]
n_contact_pairs            receptor-ligand heavy-atom pairs within 0.4 nm
n_contact_residues         receptor residues with such a pair; ``contact_residues`` lists them
                           (``LEU84;VAL87``: name and 1-based residue number)
n_hbonds, hbonds           protein-ligand hydrogen bonds (Baker-Hubbard: H...A < 0.25 nm, D-H...A
                           > 120 deg), listed as ``donor residue:atom->acceptor residue:atom``
e_int_kj_mol               interaction energy E(complex) - E(receptor) - E(ligand) [kJ/mol] ...
e_int_coulomb_kj_mol, e_int_lj_kj_mol, e_int_gb_kj_mol   ... and its Coulomb, LJ and GB(+SA) parts
                           (no cutoff; in explicit solvent the dry complex in vacuum, GB part 0)
bound                      1 if the ligand is bound in this frame: displacement <= 0.5 nm and at least
                           one contact residue, else 0
stayed_bound               1 while every frame so far was bound (0 from the first unbound frame on)
=========================  ==========================================================================

``pocket_rmsf.csv``: one row per pocket residue (receptor residues within 0.5 nm of the ligand in the
first frame): residue, RMSF of its heavy atoms over the run after the same superposition [nm].
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from ..kernels.errors import InputError
from ._contacts import CONTACT_CUTOFF_NM, contacts, hydrogen_bonds, residue_label
from ._interaction_frames import interaction_energies
from ._pose import (
    POCKET_CUTOFF_NM,
    alignment_atoms,
    heavy,
    ligand_atoms,
    ligand_displacement,
    ligand_rmsd,
    pocket_residues,
    receptor_atoms,
    residue_rmsf,
)

#: the "bound" criterion: ligand centroid within this distance of its first-frame place [nm] ...
BOUND_DISPLACEMENT_NM = 0.5
#: ... and at least this many receptor residues in contact
BOUND_MIN_CONTACT_RESIDUES = 1
COLUMNS = ("step", "time_ps", "ligand_rmsd_nm", "ligand_displacement_nm", "n_contact_pairs", "n_contact_residues",
           "contact_residues", "n_hbonds", "hbonds", "e_int_kj_mol", "e_int_coulomb_kj_mol", "e_int_lj_kj_mol",
           "e_int_gb_kj_mol", "bound", "stayed_bound")


def _atom_label(topology, i: int) -> str:
    return f"{residue_label(topology, int(topology.residue_index[i]))}:{topology.atom_names[i].strip()}"


def analyse(system, positions, ligand: str = "LIG", *, steps=None, times_ps=None, align: str = "pocket",
            implicit_solvent: str | None = None, interaction: bool = True) -> dict:
    """Pose, pocket and interaction analysis of frames of a protein-ligand complex.

    Args:
        system: the complex (``diffmd.System``; its topology names the ligand residue).
        positions: (F, N, 3) frames [nm], unwrapped (molecules whole, no jumps across the box).
        ligand: residue name of the ligand.
        steps, times_ps: (F,) step and time [ps] of each frame (default 0..F-1 and None).
        align: superpose the ``pocket`` (default) or the whole ``protein`` on the first frame.
        implicit_solvent: the run's GB model for the interaction energy's GB part (None: no GB part).
        interaction: compute the interaction energies (three energy evaluations per frame).

    Returns:
        ``{"columns": {name: (F,) array or list}, "pocket_residues": [...], "pocket_rmsf_nm": (P,),
        "summary": {...}}`` with the columns of ``analysis.csv`` (module docstring).
    """
    pos = np.asarray(positions, np.float64)
    if pos.ndim != 3 or pos.shape[1:] != (system.n_atoms, 3):
        raise InputError(f"positions must be (frames, {system.n_atoms}, 3) [nm], got shape {pos.shape}")
    top = system.topology
    lig = ligand_atoms(top, ligand)
    rec = receptor_atoms(top, lig)
    if len(rec) == 0:
        raise InputError(f"the system has no receptor atoms besides the ligand {ligand!r}")
    lig_heavy = heavy(top, lig)
    align_atoms = alignment_atoms(top, pos[0], lig, rec, align)
    ref = pos[0]
    rmsd = np.asarray(ligand_rmsd(pos, ref, lig_heavy, align_atoms))
    moved = np.asarray(ligand_displacement(pos, ref, lig_heavy, align_atoms))
    n_pairs, res_lists = contacts(top, pos, lig, rec)
    hbonds = hydrogen_bonds(top, pos, lig, rec)
    n_res = np.array([len(r) for r in res_lists])
    bound = (moved <= BOUND_DISPLACEMENT_NM) & (n_res >= BOUND_MIN_CONTACT_RESIDUES)
    n_frames = len(pos)
    cols = {
        "step": np.arange(n_frames) if steps is None else np.asarray(steps),
        "time_ps": np.full(n_frames, np.nan) if times_ps is None else np.asarray(times_ps, np.float64),
        "ligand_rmsd_nm": rmsd, "ligand_displacement_nm": moved, "n_contact_pairs": n_pairs,
        "n_contact_residues": n_res, "contact_residues": [";".join(residue_label(top, r) for r in rl) for rl in res_lists],
        "n_hbonds": np.array([len(h) for h in hbonds]),
        "hbonds": [";".join(f"{_atom_label(top, d)}->{_atom_label(top, a)}" for d, _, a in h) for h in hbonds],
        "bound": bound.astype(int), "stayed_bound": np.cumprod(bound).astype(int),
    }
    if interaction:
        e = interaction_energies(system, pos, lig, rec, implicit_solvent=implicit_solvent)
        cols.update(e_int_kj_mol=e["total"], e_int_coulomb_kj_mol=e["coulomb"], e_int_lj_kj_mol=e["lj"],
                    e_int_gb_kj_mol=e["gb"])
    else:
        cols.update({k: np.full(n_frames, np.nan) for k in COLUMNS if k.startswith("e_int")})
    pocket = pocket_residues(top, ref, lig, rec)
    fluct = residue_rmsf(top, pos, pocket, align_atoms)
    summary = {
        "ligand": ligand, "ligand_atoms": lig.tolist(), "frames": n_frames, "align": align,
        "alignment_atoms": len(align_atoms), "pocket_cutoff_nm": POCKET_CUTOFF_NM,
        "contact_cutoff_nm": CONTACT_CUTOFF_NM,
        "bound_criterion": f"ligand heavy-atom centroid within {BOUND_DISPLACEMENT_NM} nm of its first-frame place "
                           f"(pocket superposed) and >= {BOUND_MIN_CONTACT_RESIDUES} receptor residue(s) within "
                           f"{CONTACT_CUTOFF_NM} nm",
        "stayed_bound": bool(cols["stayed_bound"][-1]), "bound_fraction": float(bound.mean()),
        "final_ligand_rmsd_nm": float(rmsd[-1]), "max_ligand_rmsd_nm": float(rmsd.max()),
        "interaction_energy": "GB (" + implicit_solvent + ")" if implicit_solvent else "vacuum, dry complex",
    }
    return {"columns": cols, "pocket_residues": [residue_label(top, r) for r in pocket],
            "pocket_rmsf_nm": fluct, "summary": summary}


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.6g}"


def write_analysis(out: str, result: dict) -> list:
    """Write ``analysis.csv``, ``pocket_rmsf.csv`` and ``analysis.json`` of ``analyse``'s result into
    folder ``out``; returns the paths."""
    cols = result["columns"]
    paths = [os.path.join(out, n) for n in ("analysis.csv", "pocket_rmsf.csv", "analysis.json")]
    with open(paths[0], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for k in range(len(cols["step"])):
            w.writerow([_fmt(cols[c][k]) for c in COLUMNS])
    with open(paths[1], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("residue", "rmsf_nm"))
        for label, value in zip(result["pocket_residues"], result["pocket_rmsf_nm"]):
            w.writerow((label, _fmt(value)))
    with open(paths[2], "w") as fh:
        json.dump({**result["summary"], "pocket_residues": result["pocket_residues"]}, fh, indent=2)
        fh.write("\n")
    return paths


def read_analysis(path: str) -> dict:
    """Columns of an ``analysis.csv`` as arrays (numbers) or lists (the residue/hbond strings)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for c in COLUMNS:
        values = [r[c] for r in rows]
        out[c] = values if c in ("contact_residues", "hbonds") else np.array([float(v) for v in values])
    return out


def analyse_run(out: str, system, ligand: str = "LIG", *, align: str = "pocket",
                implicit_solvent: str | None = None, interaction: bool = True) -> dict:
    """Analyse the run in folder ``out`` (its ``trajectory.dcd``) and write its analysis files there.

    Args:
        out: the run's output folder (``diffmd run --out``/``simulate(out=)``).
        system: the simulated complex (topology and parameters).
        ligand, align, implicit_solvent, interaction: as ``analyse``.

    Returns:
        ``analyse``'s result.
    """
    from ..io import read_dcd

    path = os.path.join(out, "trajectory.dcd")
    if not os.path.isfile(path):
        raise InputError(f"{out}: no trajectory.dcd to analyse")
    positions, _, info = read_dcd(path)
    n = len(positions)
    if n == 0:
        raise InputError(f"{path}: no frames to analyse")
    steps = info["first_step"] + info["interval"] * np.arange(n)
    steps[-1] = info.get("last_step", steps[-1])
    result = analyse(system, positions, ligand, steps=steps, times_ps=steps * info["dt_ps"], align=align,
                     implicit_solvent=implicit_solvent, interaction=interaction)
    write_analysis(out, result)
    return result


def ligand_for_run(prmtop: str | None, flag: str | None, system) -> str | None:
    """The ligand residue name a run analyses: ``--ligand`` when given, else the ``ligand_name`` of a
    ``prepare.json`` beside ``prmtop`` (a ``diffmd prepare`` folder's complex), else None.

    Raises:
        InputError: the named residue is not in ``system`` (before the run starts).
    """
    name = flag
    if name is None and prmtop is not None:
        record = os.path.join(os.path.dirname(os.path.abspath(prmtop)), "prepare.json")
        if os.path.basename(prmtop) == "complex.prmtop" and os.path.isfile(record):
            with open(record) as fh:
                name = json.load(fh).get("options", {}).get("ligand_name")
    if name is not None:
        try:
            ligand_atoms(system.topology, name)
        except InputError as exc:
            raise InputError(f"--ligand {name}: {exc}") from None
    return name
