"""Amber's generalized-Born radius sets, and OpenMM's warning when a prmtop carries the wrong one.

Each GB model was parametrized with one set of intrinsic radii, which tleap writes into the prmtop
(``set default PBradii ...``): HCT (igb=1) with mbondi, OBC1 and OBC2 (igb=2, 5) with mbondi2.
OpenMM's ``AmberPrmtopFile.createSystem`` compares every atom's radius and screening factor with
the model's standard values and warns "Non-optimal GB parameters detected for GB model ..." when
one differs by more than 1e-4 (nm for radii); diffmd warns under the same condition, then uses the
file's values as OpenMM does.

The sets (radii in Angstrom), as tleap and OpenMM assign them from elements and bonds:
bondi by element (C 1.7, H 1.2, N 1.55, O 1.5, F 1.5, Si 2.1, P 1.85, S 1.8, Cl 1.7, else 1.5);
mbondi as bondi but H bonded to C or N 1.3, to O or S 0.8; mbondi2 as bondi but H bonded to N
1.3; mbondi3 as mbondi2 but carboxylate O 1.4 and arginine HH*/HE* 1.17. Screening factors by
element: H 0.85, C 0.72, N 0.79, O 0.85, F 0.88, P 0.86, S 0.96, else 0.8.
"""

from __future__ import annotations

import warnings

import numpy as np

from ._topology import Topology
from ..kernels.constants import ANGSTROM

#: the radius set each model was parametrized with (Amber manual; OpenMM's getStandardParameters)
RECOMMENDED = {"obc2": "mbondi2", "obc1": "mbondi2", "hct": "mbondi"}
_TOLERANCE = 1e-4  # OpenMM's, in nm for radii
_BONDI = {6: 1.7, 1: 1.2, 7: 1.55, 8: 1.5, 9: 1.5, 14: 2.1, 15: 1.85, 16: 1.8, 17: 1.7}
_SCREEN = {1: 0.85, 6: 0.72, 7: 0.79, 8: 0.85, 9: 0.88, 15: 0.86, 16: 0.96}


def _neighbors(topology: Topology) -> list[list[int]]:
    partners: list[list[int]] = [[] for _ in range(topology.n_atoms)]
    for i, j in np.asarray(topology.bonds, dtype=np.int64).reshape(-1, 2):
        partners[i].append(int(j))
        partners[j].append(int(i))
    return partners


def standard_radii(topology: Topology, radius_set: str) -> np.ndarray:
    """(N,) intrinsic GB radii [nm] of ``radius_set`` (``bondi``, ``mbondi``, ``mbondi2``, ``mbondi3``)."""
    z = np.asarray(topology.elements)
    radii = np.array([_BONDI.get(int(e), 1.5) for e in z])
    if radius_set == "bondi":
        return radii * ANGSTROM
    partners = _neighbors(topology)
    for i in np.flatnonzero(z == 1):
        heavy = [j for j in partners[i] if z[j] != 1] or partners[i]  # a water's H-H "bond" is no partner
        partner = int(z[heavy[0]]) if heavy else 0
        if radius_set == "mbondi":
            radii[i] = 1.3 if partner in (6, 7) else 0.8 if partner in (8, 16) else 1.2
        else:
            radii[i] = 1.3 if partner == 7 else 1.2
    if radius_set == "mbondi3":
        for i in range(topology.n_atoms):
            name = topology.atom_names[i].strip()
            if z[i] == 8 and _is_carboxylate_oxygen(i, z, partners):
                radii[i] = 1.4
            elif topology.residue_names[topology.residue_index[i]].strip() == "ARG" and name.startswith(("HH", "HE")):
                radii[i] = 1.17
    return radii * ANGSTROM


def _is_carboxylate_oxygen(i: int, z: np.ndarray, partners: list[list[int]]) -> bool:
    # an O whose only partner is a C with three partners, another of them an O
    if len(partners[i]) != 1 or z[partners[i][0]] != 6:
        return False
    carbon = partners[i][0]
    return len(partners[carbon]) == 3 and any(z[k] == 8 for k in partners[carbon] if k != i)


def standard_screen(topology: Topology) -> np.ndarray:
    """(N,) standard HCT/OBC screening factors by element [-]."""
    return np.array([_SCREEN.get(int(e), 0.8) for e in topology.elements])


def warn_if_nonstandard_gb(topology: Topology, radii, screen, model: str, source: str = "") -> None:
    """Warn (``UserWarning``) when ``radii`` [nm] or ``screen`` are not the standard values of
    the radius set ``model`` was parametrized with, under OpenMM's condition and tolerance."""
    recommended = RECOMMENDED.get(model)
    if recommended is None:
        return
    radii, screen = np.asarray(radii, np.float64), np.asarray(screen, np.float64)
    want_r, want_s = standard_radii(topology, recommended), standard_screen(topology)
    off = (np.abs(radii - want_r) > _TOLERANCE) | (np.abs(screen - want_s) > _TOLERANCE)
    if not np.any(off):
        return
    if np.all(np.abs(radii - want_r) <= _TOLERANCE):
        found = f"the {recommended} radii, but screening factors other than the standard ones"
    else:
        sets = [name for name in ("bondi", "mbondi", "mbondi2", "mbondi3")
                if np.all(np.abs(radii - standard_radii(topology, name)) <= _TOLERANCE)]
        found = (f"the {sets[0]} radii" if len(sets) == 1 else
                 f"the {' = '.join(sets)} radii (the same for these atoms)" if sets else
                 "radii of none of Amber's standard sets (bondi, mbondi, mbondi2, mbondi3)")
    i = int(np.flatnonzero(off)[0])
    where = f"{source}: " if source else ""
    warnings.warn(
        f"{where}non-optimal GB parameters for implicit_solvent={model!r} (OpenMM: 'Non-optimal GB parameters "
        f"detected for GB model {model.upper()}'): the prmtop has {found}, but {model.upper()} was parametrized "
        f"with {recommended}. {int(off.sum())} atom(s) differ, the first {topology.describe_atom(i)}: radius "
        f"{radii[i]:.4f} nm, screen {screen[i]:.2f} (standard {want_r[i]:.4f} nm, {want_s[i]:.2f}). The file's "
        f"values are used, as OpenMM does; for the recommended set rebuild the prmtop with tleap: "
        f"'set default PBradii {recommended}' before saveamberparm.", UserWarning, stacklevel=3)
