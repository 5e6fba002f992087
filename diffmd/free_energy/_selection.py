"""Atom selections of a binding free-energy calculation: the ligand, the receptor, the ligand alone.

Host-side helpers of ``diffmd.free_energy.abfe``: the ligand is chosen by residue name,
the receptor is every other atom that is not water or a monatomic ion, and in implicit
solvent the solvent leg's system is the complex's ligand cut out with its own force-field
terms (``ligand_system``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernels.constraint_setup import WATER_RESIDUES
from ..kernels.errors import InputError, UnsupportedError

#: residue names of monatomic ions (Amber and CHARMM spellings), kept out of the receptor
ION_RESIDUES = frozenset({"NA", "NA+", "Na+", "CL", "CL-", "Cl-", "K", "K+", "MG", "MG2", "CA", "CAL", "ZN", "LI",
                          "RB", "CS", "SOD", "CLA", "POT", "CES", "BR", "IOD", "F"})


def residue_atoms(system, resname: str, role: str = "the ligand") -> np.ndarray:
    """Indices of the atoms whose residue is named ``resname`` (whitespace and case ignored).

    ``role`` names what the residue is for in the error message.

    Raises:
        InputError: no such residue (the message lists the names there are).
    """
    top = system.topology
    want = str(resname).strip().upper()
    names = [top.residue_names[r].strip().upper() for r in top.residue_index]
    atoms = np.array([i for i, n in enumerate(names) if n == want], np.int64)
    if atoms.size == 0:
        present = sorted({top.residue_names[r].strip() for r in top.residue_index})
        shown = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "")
        raise InputError(f"no residue named {resname!r} in {system.source or 'the system'}: {role} must be a "
                         f"residue of the system (residues there: {shown})")
    return atoms


def select_atoms(system, selection: str, role: str = "the selection") -> np.ndarray:
    """Sorted 0-based atom indices of a selection string (host).

    The string is a comma-separated union of terms, each ``resname NAME`` (every atom of the
    residues named NAME), ``N`` (one atom) or ``A-B`` (atoms A to B, both included); indices
    are 0-based, as everywhere in diffmd. Examples: ``"resname B2"``, ``"0-23"``,
    ``"resname LIG, 1200-1260"``.

    Raises:
        InputError: an empty or unreadable term, an unknown residue (the message lists the
        residue names there are), an index outside the system.
    """
    text = str(selection).strip()
    if not text:
        raise InputError(f"{role} is empty: give 'resname NAME', an index range such as '0-23', or a "
                         "comma-separated union of them")
    n = system.n_atoms
    chosen = []
    for term in (t.strip() for t in text.split(",")):
        words = term.split()
        if len(words) == 2 and words[0].lower() == "resname":
            chosen.append(residue_atoms(system, words[1], role))
            continue
        bounds = term.replace(" ", "").split("-")
        if not (1 <= len(bounds) <= 2 and all(b.isdigit() for b in bounds)):
            raise InputError(f"cannot read {term!r} in {role} {text!r}: each comma-separated term is 'resname NAME', "
                             "an atom index 'N' or a range 'A-B' (0-based, both ends included)")
        lo, hi = int(bounds[0]), int(bounds[-1])
        if lo > hi or hi >= n:
            raise InputError(f"{term!r} in {role}: atom ranges must be ascending and within 0-{n - 1} "
                             f"({system.source or 'the system'} has {n} atoms)")
        chosen.append(np.arange(lo, hi + 1))
    return np.unique(np.concatenate(chosen)).astype(np.int64)


def receptor_atoms(system, ligand) -> np.ndarray:
    """Every atom that is not the ligand, a water or a monatomic ion (sorted indices).

    Raises:
        InputError: nothing is left (the system holds no receptor).
    """
    top = system.topology
    skip = np.zeros(system.n_atoms, bool)
    skip[np.asarray(ligand)] = True
    for i, r in enumerate(top.residue_index):
        name = top.residue_names[r].strip()
        if name.upper() in WATER_RESIDUES or name in ION_RESIDUES:
            skip[i] = True
    receptor = np.flatnonzero(~skip)
    if receptor.size == 0:
        raise InputError(f"{system.source or 'the system'}: no receptor atoms besides the ligand, water and ions: "
                         "give the complex (receptor + ligand), not the ligand alone")
    return receptor


def ligand_system(system, ligand):
    """The ligand alone: a ``System`` of the atoms ``ligand`` with the terms among them (no box).

    Every bonded term, 1-4 pair, CMAP and exclusion whose atoms all lie in the ligand is
    kept; the Lennard-Jones tables stay whole (unused types cost nothing), the per-type
    counts are recounted. This is the solvent leg of a calculation in implicit solvent.

    Raises:
        InputError: the ligand is bonded to atoms outside it.
        UnsupportedError: a system from OpenMM (its constraints and sites would need
            remapping): give the solvent leg's system yourself.
    """
    if system.physics is not None:
        raise UnsupportedError(f"{system.source or 'the system'} comes from an OpenMM System: cutting the ligand "
                               "out of it is not supported; give the solvent leg's system (the ligand alone) yourself")
    atoms = np.sort(np.asarray(ligand, np.int64))
    n = system.n_atoms
    remap = np.full(n, -1, np.int64)
    remap[atoms] = np.arange(len(atoms))
    p, t = system.params, system.terms

    def rows(idx):
        idx = np.asarray(idx)
        if idx.size == 0:
            return np.zeros(len(idx), bool)
        inside = remap[idx] >= 0
        partly = inside.any(axis=1) & ~inside.all(axis=1)
        if partly.any():
            i = int(np.flatnonzero(partly)[0])
            raise InputError(f"the ligand is bonded to the rest of the system (term over atoms "
                             f"{idx[i].tolist()}): select the whole molecule")
        return inside.all(axis=1)

    bond, angle, torsion = rows(t.bond_idx), rows(t.angle_idx), rows(t.torsion_idx)
    pair14, excl = rows(t.pair14_idx), rows(t.exclusions)
    cmap = rows(np.asarray(t.cmap_idx)) if np.asarray(t.cmap_idx).size else np.zeros(0, bool)

    def take(a, keep):
        return np.asarray(a)[keep]

    def renumber(idx, keep):
        idx = np.asarray(idx)
        return remap[idx[keep]].astype(idx.dtype) if idx.size else idx

    atom_type = np.asarray(t.atom_type)[atoms]
    n_types = np.asarray(p.lj_a).shape[0]
    terms = dataclasses.replace(
        t, atom_type=atom_type,
        type_counts=np.bincount(atom_type, minlength=n_types).astype(np.asarray(t.type_counts).dtype),
        bond_idx=renumber(t.bond_idx, bond), angle_idx=renumber(t.angle_idx, angle),
        torsion_idx=renumber(t.torsion_idx, torsion), torsion_periodicity=take(t.torsion_periodicity, torsion),
        pair14_idx=renumber(t.pair14_idx, pair14), cmap_idx=renumber(t.cmap_idx, cmap),
        cmap_map=take(t.cmap_map, cmap), exclusions=renumber(t.exclusions, excl))
    params = dataclasses.replace(
        p, charges=take(p.charges, atoms), bond_k=take(p.bond_k, bond), bond_r0=take(p.bond_r0, bond),
        angle_k=take(p.angle_k, angle), angle_theta0=take(p.angle_theta0, angle),
        torsion_k=take(p.torsion_k, torsion), torsion_phase=take(p.torsion_phase, torsion),
        coulomb14_scale=take(p.coulomb14_scale, pair14), lj14_scale=take(p.lj14_scale, pair14),
        gb_radii=take(p.gb_radii, atoms), gb_screen=take(p.gb_screen, atoms))
    return dataclasses.replace(
        system, topology=system.topology.subset(atoms), masses=np.asarray(system.masses)[atoms], params=params,
        terms=terms, positions=None if system.positions is None else np.asarray(system.positions)[atoms],
        velocities=None if system.velocities is None else np.asarray(system.velocities)[atoms], box=None,
        source=f"{system.source} (ligand only)")
