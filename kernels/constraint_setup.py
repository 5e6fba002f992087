"""Host-side constraint set-up: which bonds are constrained, rigid waters, degrees of freedom, HMR.

These run once on the host with numpy (nothing here is traced). They follow
OpenMM's ``createSystem`` conventions:

- ``constraints='none' | 'hbonds' | 'allbonds'``: no bond, bonds with a
  hydrogen, or every bond becomes a distance constraint at its force-field
  equilibrium length; atoms without mass (virtual sites) are never constrained.
- ``rigid_water=True``: each water (one oxygen bonded to two hydrogens and
  nothing else) is made fully rigid whatever ``constraints`` says, with O-H from
  the O-H bond length and H-H from an H-H bond if the force field has one (Amber
  prmtops do) or else from the H-O-H equilibrium angle (as OpenMM's ForceField
  does for TIP3P). Waters are solved analytically by SETTLE.
- ``constraints_from_pairs``: the constraint set of an explicit list of constrained
  pairs (an OpenMM System's), rigid three-site clusters recognised for SETTLE as
  OpenMM recognises them, the rest SHAKE/RATTLE, with the system's virtual sites.
- ``count_degrees_of_freedom``: 3N - Nc, less 3 when centre-of-mass motion is
  removed.
- ``repartition_hydrogen_mass``: OpenMM's ``hydrogenMass=`` option.
"""

from __future__ import annotations

import numpy as np

from .constraints import Constraints
from .errors import InputError

#: Residue names OpenMM treats as water.
WATER_RESIDUES = frozenset({"WAT", "HOH", "TP3", "TIP3", "T3P", "SOL", "SPC", "TP4", "TP5", "T4E"})

CONSTRAINT_MODES = ("none", "hbonds", "allbonds")


def _neighbors(n_atoms, bonds):
    nbrs = [[] for _ in range(n_atoms)]
    for a, b in bonds:
        nbrs[int(a)].append(int(b))
        nbrs[int(b)].append(int(a))
    return nbrs


def find_waters(n_atoms, bonds, elements, residue_index=None, residue_names=None) -> np.ndarray:
    """Find 3-site waters: an oxygen bonded to exactly two hydrogens and nothing else.

    Args:
        n_atoms: number of atoms.
        bonds: (B, 2) bonded pairs.
        elements: (N,) atomic numbers.
        residue_index: (N,) residue of each atom, optional; with ``residue_names``
            a water must also be a residue named like water (``WATER_RESIDUES``)
            holding exactly these three atoms.
        residue_names: (R,) residue names, optional.

    Returns:
        (W, 3) int32 (O, H, H) atom indices, in order of the oxygen.
    """
    elements = np.asarray(elements)
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    nbrs = _neighbors(n_atoms, bonds)
    res_count = None
    if residue_index is not None and residue_names is not None:
        residue_index = np.asarray(residue_index)
        res_count = np.bincount(residue_index, minlength=len(residue_names))
    out = []
    for o in np.flatnonzero(elements == 8):
        hs = [a for a in nbrs[o] if elements[a] == 1]
        if len(hs) != 2 or len(nbrs[o]) != 2:
            continue
        if any(set(nbrs[h]) - {o, hs[0], hs[1]} for h in hs):
            continue
        if res_count is not None:
            r = residue_index[o]
            if residue_names[r].strip().upper() not in WATER_RESIDUES or res_count[r] != 3:
                continue
            if residue_index[hs[0]] != r or residue_index[hs[1]] != r:
                continue
        out.append((o, min(hs), max(hs)))
    return np.array(out, dtype=np.int32).reshape(-1, 3)


def build_constraints(
    bonds,
    lengths,
    masses,
    elements,
    constraints: str = "hbonds",
    rigid_water: bool = True,
    *,
    angles=None,
    residue_index=None,
    residue_names=None,
    tolerance: float = 1e-5,
    velocity_tolerance: float = 1e-5,
    max_iterations: int = 150,
    dtype=np.float64,
) -> Constraints:
    """Build the constraint set of a system, as OpenMM's ``createSystem`` would.

    Args:
        bonds: (B, 2) bonded atom pairs (0-based).
        lengths: (B,) equilibrium bond lengths [nm].
        masses: (N,) masses [amu] (0 for virtual sites, which are never constrained).
        elements: (N,) atomic numbers.
        constraints: ``'none'``, ``'hbonds'`` or ``'allbonds'``.
        rigid_water: make waters fully rigid (SETTLE) whatever ``constraints`` is.
        angles: optional (A, 3) atom triples and (A,) equilibrium angles [rad] as
            a tuple ``(triples, theta0)``; used for a water's H-H distance when
            the bond list has no H-H bond.
        residue_index, residue_names: optional residue information for water
            detection (see ``find_waters``).
        tolerance, velocity_tolerance, max_iterations: solver settings.
        dtype: float dtype of the distances.

    Returns:
        a ``Constraints`` pytree.

    Raises:
        InputError: unknown mode, mismatched shapes, or a water whose H-H distance
            cannot be determined, or whose hydrogens differ in mass.
    """
    if constraints is None:
        constraints = "none"
    if constraints not in CONSTRAINT_MODES:
        raise InputError(
            f"unknown constraints={constraints!r}: choose one of {', '.join(CONSTRAINT_MODES)}")
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    lengths = np.asarray(lengths, dtype=np.float64).reshape(-1)
    masses = np.asarray(masses, dtype=np.float64)
    elements = np.asarray(elements)
    n_atoms = masses.shape[0]
    if lengths.shape[0] != bonds.shape[0]:
        raise InputError(f"bonds ({bonds.shape[0]}) and lengths ({lengths.shape[0]}) differ in count")
    if elements.shape[0] != n_atoms:
        raise InputError(f"elements ({elements.shape[0]}) and masses ({n_atoms}) differ in count")

    water = np.zeros((0, 3), np.int32)
    water_dist = np.zeros((0, 2))
    in_water = np.zeros(n_atoms, bool)
    if rigid_water:
        water = find_waters(n_atoms, bonds, elements, residue_index, residue_names)
        water_dist = _water_distances(water, bonds, lengths, masses, angles)
        in_water[water.reshape(-1)] = True

    massive = masses > 0
    keep = massive[bonds[:, 0]] & massive[bonds[:, 1]]
    keep &= ~(in_water[bonds[:, 0]] & in_water[bonds[:, 1]])
    if constraints == "hbonds":
        keep &= (elements[bonds[:, 0]] == 1) | (elements[bonds[:, 1]] == 1)
    elif constraints == "none":
        keep &= False
    pairs = bonds[keep].astype(np.int32)
    return Constraints(
        water=water,
        water_distances=water_dist.astype(dtype),
        water_mask=np.ones(len(water), bool),
        pairs=pairs.reshape(-1, 2),
        lengths=lengths[keep].astype(dtype),
        pair_mask=np.ones(len(pairs), bool),
        tolerance=float(tolerance),
        velocity_tolerance=float(velocity_tolerance),
        max_iterations=int(max_iterations),
    )


def constraints_from_pairs(pairs, lengths, masses, *, virtual_sites=None, tolerance: float = 1e-5,
                           velocity_tolerance: float = 1e-5, max_iterations: int = 150,
                           dtype=np.float64) -> Constraints:
    """A ``Constraints`` set from explicit distance constraints (an OpenMM System's own list).

    Rigid three-site clusters go to SETTLE exactly where OpenMM's own SETTLE takes them:
    three atoms joined by three constraints and by no other, two of which share an atom
    (the "oxygen") and have equal lengths, with equal masses on the other two atoms. Every
    other constraint is solved by SHAKE/RATTLE.

    Args:
        pairs: (C, 2) constrained atom pairs (0-based).
        lengths: (C,) distances [nm].
        masses: (N,) masses [amu].
        virtual_sites: a ``VirtualSites`` set to place after the constraints, or None.
        tolerance, velocity_tolerance, max_iterations, dtype: as ``build_constraints``.

    Raises:
        InputError: mismatched shapes, an atom constrained to itself or a constraint on a
            massless atom (OpenMM refuses those too).
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    lengths = np.asarray(lengths, dtype=np.float64).reshape(-1)
    masses = np.asarray(masses, dtype=np.float64)
    if lengths.shape[0] != pairs.shape[0]:
        raise InputError(f"constraint pairs ({pairs.shape[0]}) and lengths ({lengths.shape[0]}) differ in count")
    for (a, b), d in zip(pairs.tolist(), lengths.tolist()):
        if a == b or masses[a] == 0 or masses[b] == 0 or not d > 0:
            raise InputError(f"constraint between atoms {a} and {b} (distance {d} nm) is invalid: it must join two "
                             "different atoms with mass at a positive distance")
    count = np.zeros(masses.shape[0], np.int64)
    np.add.at(count, pairs.reshape(-1), 1)
    # a candidate cluster: both atoms of a constraint are in exactly two constraints
    by_atom = {}
    for k, (a, b) in enumerate(pairs.tolist()):
        by_atom.setdefault(a, []).append(k)
        by_atom.setdefault(b, []).append(k)
    in_settle = np.zeros(len(pairs), bool)
    water, water_dist = [], []
    for k, (a, b) in enumerate(pairs.tolist()):
        if in_settle[k] or count[a] != 2 or count[b] != 2:
            continue
        ks = sorted(set(by_atom[a]) | set(by_atom[b]))
        atoms = sorted(set(pairs[ks].reshape(-1).tolist()))
        if len(ks) != 3 or len(atoms) != 3 or any(count[x] != 2 for x in atoms):
            continue
        centre = _settle_centre(pairs[ks], lengths[ks], masses)
        if centre is None:
            continue
        o, h1, h2, d_oh, d_hh = centre
        water.append((o, h1, h2))
        water_dist.append((d_oh, d_hh))
        in_settle[ks] = True
    keep = ~in_settle
    water = np.array(water, np.int32).reshape(-1, 3)
    return Constraints(
        water=water, water_distances=np.array(water_dist, np.float64).reshape(-1, 2).astype(dtype),
        water_mask=np.ones(len(water), bool), pairs=pairs[keep].astype(np.int32).reshape(-1, 2),
        lengths=lengths[keep].astype(dtype), pair_mask=np.ones(int(keep.sum()), bool), tolerance=float(tolerance),
        velocity_tolerance=float(velocity_tolerance), max_iterations=int(max_iterations),
        virtual_sites=virtual_sites)


def _settle_centre(pairs, lengths, masses):
    """(O, H1, H2, d_OH, d_HH) of a 3-constraint triangle SETTLE can solve, else None."""
    for k in range(3):
        a, b = pairs[(k + 1) % 3], pairs[(k + 2) % 3]
        shared = set(a.tolist()) & set(b.tolist())
        if len(shared) != 1:
            continue
        o = shared.pop()
        h1, h2 = sorted(set(pairs.reshape(-1).tolist()) - {o})
        d1, d2 = lengths[(k + 1) % 3], lengths[(k + 2) % 3]
        if abs(d1 - d2) <= 1e-9 * max(d1, d2) and masses[h1] == masses[h2]:
            return int(o), int(h1), int(h2), float(d1), float(lengths[k])
    return None


def _water_distances(water, bonds, lengths, masses, angles):
    length_of = {}
    for (a, b), d in zip(bonds.tolist(), lengths.tolist()):
        length_of[(min(a, b), max(a, b))] = d
    angle_of = {}
    if angles is not None:
        triples, theta = angles
        for (a, b, c), t in zip(np.asarray(triples).tolist(), np.asarray(theta).tolist()):
            angle_of[(b, min(a, c), max(a, c))] = t
    out = np.zeros((len(water), 2))
    for w, (o, h1, h2) in enumerate(water.tolist()):
        d1, d2 = length_of[(min(o, h1), max(o, h1))], length_of[(min(o, h2), max(o, h2))]
        if abs(d1 - d2) > 1e-9 * max(d1, d2) or masses[h1] != masses[h2]:
            raise InputError(
                f"water with oxygen {o}: its two O-H bonds ({d1}, {d2} nm) or hydrogen masses "
                f"({masses[h1]}, {masses[h2]} amu) differ; SETTLE needs a symmetric water "
                "(use rigid_water=False to constrain it by bonds instead)")
        if (h1, h2) in length_of:
            d_hh = length_of[(h1, h2)]
        elif (o, h1, h2) in angle_of:
            d_hh = float(np.sqrt(2.0 * d1 * d1 * (1.0 - np.cos(angle_of[(o, h1, h2)]))))
        else:
            raise InputError(
                f"water with oxygen {o} has no H-H bond and no H-O-H angle: pass "
                "angles=(triples, theta0) so the rigid H-H distance can be computed")
        out[w] = (d1, d_hh)
    return out


def count_degrees_of_freedom(n_atoms: int, n_constraints: int, remove_com: bool) -> int:
    """Degrees of freedom for temperature: 3N - Nc, minus 3 if COM motion is removed.

    Args:
        n_atoms: number of atoms with mass (padding and virtual sites excluded).
        n_constraints: number of distance constraints (3 per rigid water).
        remove_com: whether centre-of-mass motion is removed (OpenMM's CMMotionRemover).
    """
    dof = 3 * int(n_atoms) - int(n_constraints) - (3 if remove_com else 0)
    if dof <= 0:
        raise InputError(f"{n_atoms} atoms with {n_constraints} constraints leave no degree of freedom")
    return dof


def repartition_hydrogen_mass(masses, bonds, elements, hydrogen_mass: float, water=None):
    """Hydrogen mass repartitioning, as OpenMM's ``createSystem(hydrogenMass=...)``.

    Every hydrogen bonded to a heavy atom gets ``hydrogen_mass`` [amu]; the
    difference is taken from that heavy atom, so each molecule keeps its mass.
    Waters are left untouched (rigid waters do not need it), and so are
    hydrogens bonded only to hydrogens and atoms without mass.

    Args:
        masses: (N,) masses [amu].
        bonds: (B, 2) bonded pairs.
        elements: (N,) atomic numbers.
        hydrogen_mass: new hydrogen mass [amu].
        water: optional (W, 3) water atom triples; by default found by ``find_waters``.

    Returns:
        (N,) new masses [amu] (numpy).

    Raises:
        InputError: if a heavy atom would be left with a mass <= 0.
    """
    masses = np.array(masses, dtype=np.float64)
    elements = np.asarray(elements)
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    if hydrogen_mass <= 0:
        raise InputError(f"hydrogen_mass must be positive, got {hydrogen_mass} amu")
    if water is None:
        water = find_waters(masses.shape[0], bonds, elements)
    skip = np.zeros(masses.shape[0], bool)
    skip[np.asarray(water, dtype=np.int64).reshape(-1)] = True
    for a, b in bonds.tolist():
        if elements[a] == 1:
            a, b = b, a
        if elements[b] != 1 or elements[a] in (0, 1) or skip[a] or masses[a] == 0:
            continue
        transfer = hydrogen_mass - masses[b]
        masses[b] = hydrogen_mass
        masses[a] -= transfer
        if masses[a] <= 0:
            raise InputError(
                f"hydrogen_mass={hydrogen_mass} amu leaves atom {a} with mass {masses[a]:.4g} amu; "
                "use a smaller hydrogen mass")
    return masses
