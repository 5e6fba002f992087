"""Build a diffmd System from Amber prmtop (+ coordinate) files.

Units are converted here, once: Angstrom -> nm, kcal/mol -> kJ/mol, Amber's
charge unit -> e, and Amber's force-constant conventions (E = k (x - x0)^2)
to OpenMM's (E = 1/2 k (x - x0)^2).
"""

from __future__ import annotations

import os

import numpy as np

from ..kernels.constants import AMBER_CHARGE_SCALE, ANGSTROM, KCAL
from ..kernels.errors import InputError, UnsupportedError
from ..potentials.amber import AmberParams, AmberTerms
from ..system import Topology, chains_from_bonds, element_from_mass, element_from_name
from ._coords import box_from_lengths_angles, read_coordinates
from ._prmtop import Prmtop, read_prmtop
from ..kernels.cmap import cmap_from_prmtop_sections

_DEFAULT_SCEE = 1.2
_DEFAULT_SCNB = 2.0


def _triples(prm: Prmtop, flag: str, width: int, count: int) -> np.ndarray:
    raw = np.asarray(prm.get(flag, expected=width * count), dtype=np.int64)
    return raw.reshape(count, width)


def _lj_tables(prm: Prmtop, n_types: int):
    """(T, T) A and B tables [kJ/mol nm^12, nm^6] through NONBONDED_PARM_INDEX."""
    index = np.asarray(prm.get("NONBONDED_PARM_INDEX", expected=n_types * n_types), dtype=np.int64)
    n_pairs = n_types * (n_types + 1) // 2
    acoef = np.asarray(prm.get("LENNARD_JONES_ACOEF", expected=n_pairs))
    bcoef = np.asarray(prm.get("LENNARD_JONES_BCOEF", expected=n_pairs))
    index = index.reshape(n_types, n_types)
    if np.any(index < 0):
        # negative entries point at 10-12 hydrogen-bond terms, unused by modern force fields
        hb_a = np.asarray(prm.sections.get("HBOND_ACOEF", [0.0]))
        if np.any(hb_a != 0):
            raise InputError(f"{prm.path}: 10-12 hydrogen-bond terms (HBOND_ACOEF) are not supported")
    safe = np.where(index > 0, index - 1, 0)
    a = np.where(index > 0, acoef[safe], 0.0) * KCAL * ANGSTROM**12
    b = np.where(index > 0, bcoef[safe], 0.0) * KCAL * ANGSTROM**6
    return a, b


def _scale_factors(prm: Prmtop, flag: str, n: int, default: float) -> np.ndarray:
    if prm.has(flag):
        return np.asarray(prm.get(flag, expected=n), dtype=np.float64)
    return np.full(n, default)


def system_arrays(prm: Prmtop):
    """Parameters, terms and topology (host numpy) from a parsed prmtop."""
    for flag in ("CHARMM_UREY_BRADLEY_COUNT", "CHARMM_NUM_IMPROPERS", "LES_NTYP", "POLARIZABILITY"):
        if prm.has(flag) and np.any(np.asarray(prm.sections[flag], dtype=float) != 0):
            raise UnsupportedError(f"{prm.path}: %FLAG {flag} holds terms diffmd does not model (CHARMM chamber "
                                   "Urey-Bradley/harmonic impropers, LES, polarizability); use an Amber force field")
    p = prm.pointers
    n_atoms, n_types, n_res = p["NATOM"], p["NTYPES"], p["NRES"]
    if n_atoms <= 0:
        raise InputError(f"{prm.path}: POINTERS says NATOM={n_atoms}")
    charges = np.asarray(prm.get("CHARGE", expected=n_atoms)) / AMBER_CHARGE_SCALE
    masses = np.asarray(prm.get("MASS", expected=n_atoms), dtype=np.float64)
    atom_type = np.asarray(prm.get("ATOM_TYPE_INDEX", expected=n_atoms), dtype=np.int64) - 1
    if atom_type.min() < 0 or atom_type.max() >= n_types:
        raise InputError(f"{prm.path}: ATOM_TYPE_INDEX outside 1..NTYPES={n_types}")
    lj_a, lj_b = _lj_tables(prm, n_types)

    # bonds: (i*3, j*3, type) triples, with and without hydrogen
    bond_rows = np.concatenate([_triples(prm, "BONDS_INC_HYDROGEN", 3, p["NBONH"]),
                                _triples(prm, "BONDS_WITHOUT_HYDROGEN", 3, p["MBONA"])])
    bk = np.asarray(prm.get("BOND_FORCE_CONSTANT", expected=p["NUMBND"]))
    br = np.asarray(prm.get("BOND_EQUIL_VALUE", expected=p["NUMBND"]))
    bond_idx = bond_rows[:, :2] // 3
    bond_type = bond_rows[:, 2] - 1
    bond_k = 2.0 * bk[bond_type] * KCAL / ANGSTROM**2
    bond_r0 = br[bond_type] * ANGSTROM

    angle_rows = np.concatenate([_triples(prm, "ANGLES_INC_HYDROGEN", 4, p["NTHETH"]),
                                 _triples(prm, "ANGLES_WITHOUT_HYDROGEN", 4, p["MTHETA"])])
    ak = np.asarray(prm.get("ANGLE_FORCE_CONSTANT", expected=p["NUMANG"]))
    at = np.asarray(prm.get("ANGLE_EQUIL_VALUE", expected=p["NUMANG"]))
    angle_idx = angle_rows[:, :3] // 3
    angle_type = angle_rows[:, 3] - 1
    angle_k = 2.0 * ak[angle_type] * KCAL
    angle_theta0 = at[angle_type]

    dih_rows = np.concatenate([_triples(prm, "DIHEDRALS_INC_HYDROGEN", 5, p["NPHIH"]),
                               _triples(prm, "DIHEDRALS_WITHOUT_HYDROGEN", 5, p["MPHIA"])])
    n_dtypes = p["NPTRA"]
    dk = np.asarray(prm.get("DIHEDRAL_FORCE_CONSTANT", expected=n_dtypes))
    dn = np.asarray(prm.get("DIHEDRAL_PERIODICITY", expected=n_dtypes))
    dp = np.asarray(prm.get("DIHEDRAL_PHASE", expected=n_dtypes))
    scee = _scale_factors(prm, "SCEE_SCALE_FACTOR", n_dtypes, _DEFAULT_SCEE)
    scnb = _scale_factors(prm, "SCNB_SCALE_FACTOR", n_dtypes, _DEFAULT_SCNB)
    no14 = dih_rows[:, 2] < 0  # third atom negative: 1-4 pair not computed for this term
    improper = dih_rows[:, 3] < 0  # fourth atom negative: improper torsion
    torsion_idx = np.abs(dih_rows[:, :4]) // 3
    dtype_idx = dih_rows[:, 4] - 1
    if len(dtype_idx) and (dtype_idx.min() < 0 or dtype_idx.max() >= n_dtypes):
        raise InputError(f"{prm.path}: a dihedral refers to a parameter type outside 1..NPTRA={n_dtypes}")
    torsion_k = dk[dtype_idx] * KCAL
    torsion_n = np.rint(np.abs(dn[dtype_idx])).astype(np.int64)
    torsion_phase = dp[dtype_idx]

    # 1-4 pairs: one per proper dihedral not flagged "no 1-4", as OpenMM's loader does
    use14 = ~no14 & ~improper
    pairs14 = torsion_idx[use14][:, [0, 3]]
    t14 = dtype_idx[use14]
    scee14, scnb14 = scee[t14], scnb[t14]
    bad = (scee14 == 0) | (scnb14 == 0)
    if np.any(bad):
        k = int(np.nonzero(bad)[0][0])
        raise InputError(
            f"{prm.path}: SCEE/SCNB_SCALE_FACTOR is 0.0 for dihedral type {int(t14[k]) + 1}, which has a 1-4 pair "
            "(atoms {} and {}); 0.0 is only valid for impropers and terms flagged 'no 1-4'".format(*pairs14[k] + 1)
        )
    key = np.minimum(pairs14[:, 0], pairs14[:, 1]) * n_atoms + np.maximum(pairs14[:, 0], pairs14[:, 1])
    _, first = np.unique(key, return_index=True)  # a pair listed twice is computed once (OpenMM: replace)
    first = np.sort(first)
    pairs14, scee14, scnb14 = pairs14[first], scee14[first], scnb14[first]

    # excluded atoms: NUMBER_EXCLUDED_ATOMS per atom, then 1-based partners (0 = none)
    n_excl = np.asarray(prm.get("NUMBER_EXCLUDED_ATOMS", expected=n_atoms), dtype=np.int64)
    excl_list = np.asarray(prm.get("EXCLUDED_ATOMS_LIST", expected=p["NNB"]), dtype=np.int64)
    owner = np.repeat(np.arange(n_atoms), n_excl)
    excl_pairs = np.stack([owner, excl_list - 1], axis=1)
    excl_pairs = excl_pairs[excl_pairs[:, 1] >= 0]
    exclusions = np.concatenate([excl_pairs, pairs14, bond_idx]) if len(excl_pairs) + len(pairs14) else excl_pairs
    exclusions = np.unique(np.sort(exclusions, axis=1), axis=0).reshape(-1, 2)

    cmap_grids, cmap_idx, cmap_map = _cmap_terms(prm)

    radii = np.asarray(prm.get("RADII", expected=n_atoms)) * ANGSTROM if prm.has("RADII") else np.zeros(n_atoms)
    screen = np.asarray(prm.get("SCREEN", expected=n_atoms), dtype=np.float64) if prm.has("SCREEN") \
        else np.zeros(n_atoms)

    params = AmberParams(
        charges=charges, lj_a=lj_a, lj_b=lj_b, bond_k=bond_k, bond_r0=bond_r0, angle_k=angle_k,
        angle_theta0=angle_theta0, torsion_k=torsion_k, torsion_phase=torsion_phase,
        coulomb14_scale=1.0 / scee14, lj14_scale=1.0 / scnb14, cmap_grids=cmap_grids, gb_radii=radii,
        gb_screen=screen)
    terms = AmberTerms(
        atom_type=atom_type.astype(np.int32),
        type_counts=np.bincount(atom_type, minlength=n_types).astype(np.float64),
        bond_idx=bond_idx.astype(np.int32).reshape(-1, 2), angle_idx=angle_idx.astype(np.int32).reshape(-1, 3),
        torsion_idx=torsion_idx.astype(np.int32).reshape(-1, 4), torsion_periodicity=torsion_n.astype(np.int32),
        pair14_idx=pairs14.astype(np.int32).reshape(-1, 2), cmap_idx=cmap_idx.astype(np.int32),
        cmap_map=cmap_map.astype(np.int32), exclusions=exclusions.astype(np.int32))

    # topology
    names = tuple(prm.get("ATOM_NAME", expected=n_atoms))
    res_labels = tuple(prm.get("RESIDUE_LABEL", expected=n_res))
    res_ptr = np.asarray(prm.get("RESIDUE_POINTER", expected=n_res), dtype=np.int64) - 1
    residue_index = np.zeros(n_atoms, dtype=np.int32)
    residue_index[res_ptr[1:]] = 1
    residue_index = np.cumsum(residue_index).astype(np.int32)
    if prm.has("ATOMIC_NUMBER"):
        elements = np.asarray(prm.get("ATOMIC_NUMBER", expected=n_atoms), dtype=np.int32)
        elements = np.where(elements < 0, [element_from_mass(m) for m in masses], elements)
    else:  # as OpenMM: from the atom names (masses may be repartitioned)
        elements = np.array([element_from_name(a, m) for a, m in zip(names, masses)], dtype=np.int32)
    types = tuple(prm.get("AMBER_ATOM_TYPE", expected=n_atoms)) if prm.has("AMBER_ATOM_TYPE") else ()
    topology = Topology(atom_names=names, elements=elements, residue_index=residue_index, residue_names=res_labels,
                        chain_index=chains_from_bonds(n_res, residue_index, bond_idx), bonds=bond_idx.astype(np.int32),
                        atom_types=types)

    box = None
    if p["IFBOX"] > 0:
        if not prm.has("BOX_DIMENSIONS"):
            raise InputError(f"{prm.path}: IFBOX={p['IFBOX']} but %FLAG BOX_DIMENSIONS is missing")
        beta, a, b, c = np.asarray(prm.get("BOX_DIMENSIONS", expected=4))
        box = box_from_lengths_angles(np.array([a, b, c]) * ANGSTROM, (beta, beta, beta) if p["IFBOX"] == 2
                                      else (90.0, beta, 90.0))
    return params, terms, topology, masses, box


def _cmap_terms(prm: Prmtop):
    """CMAP grids/indices in OpenMM's convention (empty arrays when the prmtop has none)."""
    if not (prm.has("CMAP_COUNT") or prm.has("CHARMM_CMAP_COUNT")):
        return np.zeros((0, 1, 1)), np.zeros((0, 5), np.int32), np.zeros((0,), np.int32)

    grids, idx, maps = cmap_from_prmtop_sections(prm.sections)
    return np.asarray(grids, np.float64), np.asarray(idx)[:, :5], np.asarray(maps)


def load_amber_arrays(prmtop: str | os.PathLike, coordinates: str | os.PathLike | None = None):
    """Read prmtop (+ coordinates) into host arrays; see ``diffmd.load_amber``."""
    prm = read_prmtop(prmtop)
    params, terms, topology, masses, box = system_arrays(prm)
    positions = velocities = None
    if coordinates is not None:
        coords = read_coordinates(coordinates, topology=topology)
        positions, velocities = coords.positions, coords.velocities
        if coords.box is not None:
            box = coords.box  # the coordinate file's box wins, as in OpenMM
    return params, terms, topology, masses, box, positions, velocities
