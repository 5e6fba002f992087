"""Receptor-ligand restraints for binding free energies, with analytic standard-state corrections.

Both are energy models with the classical signature ``energy_fn(params, positions, box,
neighbors) -> kJ/mol`` (they need no neighbor table: ``neighbor_list`` returns None), so
they add to an alchemical model with ``sum_potentials``. ``params.lambda_restraints``
(traced) scales the whole restraint, as openmmtools' ``lambda_restraints``.

- Flat-bottom (openmmtools' ``FlatBottomRestraintForce``): between the mass-weighted
  centroids of receptor atoms and ligand atoms at distance d,
  ``U = lambda K/2 (d - r0)^2`` for d > r0 and 0 inside the well.
- Boresch (Boresch et al. 2003, as YANK's ``Boresch``): receptor atoms r1, r2, r3 and ligand
  atoms l1, l2, l3; the distance |r3 l1|, the angles (r2, r3, l1) and (r3, l1, l2) and the
  dihedrals (r1, r2, r3, l1), (r2, r3, l1, l2), (r3, l1, l2, l3), each held harmonically at
  its value in a reference structure (dihedral differences wrapped into [-pi, pi)).

Standard-state corrections [kJ/mol] are -kT ln(V0 / V_restraint) with V0 = 1/(1 M) =
1.66054 nm^3 (openmmtools' and YANK's sign convention): the free energy of releasing the
decoupled ligand from the restraint into the standard volume, added to the complex leg.

Reference:
    Boresch, Tettinger, Leitgeb, Karplus, J. Phys. Chem. B 107, 9535 (2003), eq. 32.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels.bonded import bond_angles, dihedral_angles
from ..kernels.constants import AVOGADRO, KCAL
from ..kernels.errors import InputError
from ..kernels.geometry import minimum_image

__all__ = ["STANDARD_STATE_VOLUME", "FlatBottomParams", "FlatBottomRestraint", "flat_bottom_restraint",
           "flat_bottom_correction", "BoreschParams", "BoreschRestraint", "boresch_restraint", "boresch_correction",
           "select_boresch_atoms"]

#: Volume per molecule at 1 mol/L [nm^3].
STANDARD_STATE_VOLUME = 1e24 / AVOGADRO


def _pytree(data, meta=()):
    return functools.partial(jax.tree_util.register_dataclass, data_fields=list(data), meta_fields=list(meta))


class _NoTable:
    """Restraints see only their own few atoms: no neighbor table."""

    def neighbor_list(self, positions=None, box=None, **kwargs):
        return None

    def terms(self, params, positions, box=None, neighbors=None) -> dict:
        return {"restraint": self(params, positions, box, neighbors)}


# ------------------------------------------------------------------------------------- flat bottom


@_pytree(["spring_constant", "well_radius", "lambda_restraints"])
@dataclasses.dataclass(frozen=True)
class FlatBottomParams:
    """spring_constant K [kJ/mol/nm^2], well_radius r0 [nm], lambda_restraints (scalars)."""

    spring_constant: jax.Array
    well_radius: jax.Array
    lambda_restraints: jax.Array


@_pytree(["receptor", "ligand", "receptor_weights", "ligand_weights"], ["n_atoms"])
@dataclasses.dataclass(frozen=True, eq=False)  # hashable by identity: jax.jit(energy_fn) works
class FlatBottomRestraint(_NoTable):
    """Flat-bottom restraint between mass-weighted centroids [kJ/mol].

    Attributes:
        receptor, ligand: atom indices of the two groups.
        receptor_weights, ligand_weights: mass fractions within each group.
        n_atoms: atoms in the system (static).
    """

    receptor: jax.Array
    ligand: jax.Array
    receptor_weights: jax.Array
    ligand_weights: jax.Array
    n_atoms: int

    def distance(self, positions, box=None):
        """Centroid distance d [nm] (minimum image of the centroid difference when a box is given)."""
        x = jnp.asarray(positions)
        a = jnp.sum(self.receptor_weights[:, None] * x[self.receptor], axis=0)
        b = jnp.sum(self.ligand_weights[:, None] * x[self.ligand], axis=0)
        d = minimum_image(b - a, None if box is None else jnp.asarray(box, x.dtype))
        return jnp.sqrt(jnp.sum(d * d))

    def __call__(self, params: FlatBottomParams, positions, box=None, neighbors=None):
        stretch = jnp.maximum(self.distance(positions, box) - params.well_radius, 0.0)
        return params.lambda_restraints * 0.5 * params.spring_constant * stretch * stretch


def _group(atoms, n_atoms, what):
    atoms = np.asarray(atoms).reshape(-1)
    if atoms.size == 0 or not np.issubdtype(atoms.dtype, np.integer):
        raise InputError(f"{what} atoms must be a non-empty list of atom indices")
    if atoms.min() < 0 or atoms.max() >= n_atoms or len(np.unique(atoms)) != len(atoms):
        raise InputError(f"{what} atom indices must be distinct and lie in [0, {n_atoms})")
    return atoms.astype(np.int32)


def flat_bottom_restraint(receptor_atoms, ligand_atoms, masses, *, well_radius: float,
                          spring_constant: float = 0.6 * KCAL * 100, lambda_restraints: float = 1.0):
    """Flat-bottom centroid restraint ``(FlatBottomParams, FlatBottomRestraint)``.

    Args:
        receptor_atoms, ligand_atoms: atom indices of the two groups.
        masses: (N,) atom masses [amu] (centroids are mass-weighted, as OpenMM's
            ``CustomCentroidBondForce`` with default weights).
        well_radius: r0 [nm], where the harmonic wall starts.
        spring_constant: K [kJ/mol/nm^2] (default 0.6 kcal/mol/A^2).
        lambda_restraints: initial scale of the restraint.
    """
    masses = np.asarray(masses, np.float64)
    receptor = _group(receptor_atoms, len(masses), "receptor")
    ligand = _group(ligand_atoms, len(masses), "ligand")
    if not (well_radius >= 0 and spring_constant > 0):
        raise InputError(f"well_radius must be >= 0 nm and spring_constant > 0, got {well_radius}, {spring_constant}")
    weights = [masses[g] / masses[g].sum() for g in (receptor, ligand)]
    fn = FlatBottomRestraint(jnp.asarray(receptor), jnp.asarray(ligand), jnp.asarray(weights[0]),
                             jnp.asarray(weights[1]), len(masses))
    return FlatBottomParams(jnp.asarray(float(spring_constant)), jnp.asarray(float(well_radius)),
                            jnp.asarray(float(lambda_restraints))), fn


def flat_bottom_correction(spring_constant: float, well_radius: float, kT: float, box_volume: float | None = None):
    """Standard-state correction of a flat-bottom restraint [kJ/mol] (float, host).

    V_restraint = 4/3 pi r0^3 + int_r0^inf 4 pi r^2 exp(-K (r - r0)^2 / (2 kT)) dr, in closed
    form, capped at the box volume when one is given (as openmmtools does).

    Args:
        spring_constant: K [kJ/mol/nm^2]; well_radius: r0 [nm]; kT: [kJ/mol].
        box_volume: periodic box volume [nm^3] or None.
    """
    a = spring_constant / (2.0 * kT)
    r0 = well_radius
    wall = 4.0 * math.pi * (math.sqrt(math.pi) / (4.0 * a**1.5) + r0 / a + r0 * r0 * math.sqrt(math.pi / a) / 2.0)
    volume = 4.0 / 3.0 * math.pi * r0**3 + wall
    if box_volume is not None:
        volume = min(volume, float(box_volume))
    return -kT * math.log(STANDARD_STATE_VOLUME / volume)


# ------------------------------------------------------------------------------------- Boresch


@_pytree(["distance", "angle_a", "angle_b", "dihedral_a", "dihedral_b", "dihedral_c", "k_distance", "k_angle_a",
          "k_angle_b", "k_dihedral_a", "k_dihedral_b", "k_dihedral_c", "lambda_restraints"])
@dataclasses.dataclass(frozen=True)
class BoreschParams:
    """Reference values ([nm], [rad]) and force constants ([kJ/mol/nm^2], [kJ/mol/rad^2]) of a Boresch
    restraint, and its scale ``lambda_restraints`` (all scalars)."""

    distance: jax.Array
    angle_a: jax.Array
    angle_b: jax.Array
    dihedral_a: jax.Array
    dihedral_b: jax.Array
    dihedral_c: jax.Array
    k_distance: jax.Array
    k_angle_a: jax.Array
    k_angle_b: jax.Array
    k_dihedral_a: jax.Array
    k_dihedral_b: jax.Array
    k_dihedral_c: jax.Array
    lambda_restraints: jax.Array


@_pytree(["atoms"], ["n_atoms"])
@dataclasses.dataclass(frozen=True, eq=False)  # hashable by identity: jax.jit(energy_fn) works
class BoreschRestraint(_NoTable):
    """Boresch restraint on atoms (r1, r2, r3, l1, l2, l3) [kJ/mol]; ``n_atoms`` static."""

    atoms: jax.Array
    n_atoms: int

    def coordinates(self, positions, box=None):
        """(distance [nm], angle_a, angle_b, dihedral_a, dihedral_b, dihedral_c [rad])."""
        x = jnp.asarray(positions)
        box = None if box is None else jnp.asarray(box, x.dtype)
        a = self.atoms
        d = minimum_image(x[a[3]] - x[a[2]], box)
        angles = bond_angles(x, box, jnp.stack([a[1:4], a[2:5]]))
        dihedrals = dihedral_angles(x, box, jnp.stack([a[0:4], a[1:5], a[2:6]]))
        return (jnp.sqrt(jnp.sum(d * d)), angles[0], angles[1], dihedrals[0], dihedrals[1], dihedrals[2])

    def __call__(self, params: BoreschParams, positions, box=None, neighbors=None):
        r, ta, tb, pa, pb, pc = self.coordinates(positions, box)

        def wrapped(phi, phi0):
            dphi = phi - phi0
            return dphi - 2.0 * math.pi * jnp.floor(dphi / (2.0 * math.pi) + 0.5)

        p = params
        energy = (p.k_distance * (r - p.distance) ** 2 + p.k_angle_a * (ta - p.angle_a) ** 2
                  + p.k_angle_b * (tb - p.angle_b) ** 2 + p.k_dihedral_a * wrapped(pa, p.dihedral_a) ** 2
                  + p.k_dihedral_b * wrapped(pb, p.dihedral_b) ** 2 + p.k_dihedral_c * wrapped(pc, p.dihedral_c) ** 2)
        return p.lambda_restraints * 0.5 * energy


def boresch_restraint(positions, atoms, *, k_distance: float = 10.0 * KCAL * 100, k_angle: float = 10.0 * KCAL,
                      k_dihedral: float = 10.0 * KCAL, lambda_restraints: float = 1.0):
    """Boresch restraint ``(BoreschParams, BoreschRestraint)`` held at the geometry of ``positions``.

    Args:
        positions: (N, 3) reference structure [nm] (e.g. the minimized complex).
        atoms: (r1, r2, r3, l1, l2, l3), three receptor then three ligand atoms
            (``select_boresch_atoms`` chooses them).
        k_distance: [kJ/mol/nm^2] (default 10 kcal/mol/A^2).
        k_angle, k_dihedral: [kJ/mol/rad^2] (default 10 kcal/mol/rad^2 each).
        lambda_restraints: initial scale.
    """
    positions = np.asarray(positions, np.float64)
    atoms = np.asarray(atoms).reshape(-1)
    if atoms.shape != (6,) or len(np.unique(atoms)) != 6 or atoms.min() < 0 or atoms.max() >= len(positions):
        raise InputError("a Boresch restraint needs six distinct atom indices (r1, r2, r3, l1, l2, l3)")
    fn = BoreschRestraint(jnp.asarray(atoms.astype(np.int32)), len(positions))
    values = [float(v) for v in jax.jit(fn.coordinates)(jnp.asarray(positions))]  # one compile, not op by op
    for angle in values[1:3]:
        if not 0.1 < angle < math.pi - 0.1:
            raise InputError(f"a Boresch angle of {math.degrees(angle):.1f} deg is almost collinear: the dihedrals "
                             "are then ill-defined; choose other atoms (select_boresch_atoms)")
    k = [k_distance, k_angle, k_angle, k_dihedral, k_dihedral, k_dihedral]
    return BoreschParams(*(jnp.asarray(v) for v in values), *(jnp.asarray(float(c)) for c in k),
                         jnp.asarray(float(lambda_restraints))), fn


def boresch_correction(params: BoreschParams, kT: float) -> float:
    """Analytic standard-state correction of a Boresch restraint [kJ/mol] (Boresch 2003, eq. 32)::

        -kT ln[ 8 pi^2 V0 / (r^2 sin(theta_a) sin(theta_b))
                * sqrt(K_r K_ta K_tb K_pa K_pb K_pc) / (2 pi kT)^3 ]
    """
    p = jax.tree_util.tree_map(float, params)
    ks = p.k_distance * p.k_angle_a * p.k_angle_b * p.k_dihedral_a * p.k_dihedral_b * p.k_dihedral_c
    ratio = (8.0 * math.pi**2 * STANDARD_STATE_VOLUME / (p.distance**2 * math.sin(p.angle_a) * math.sin(p.angle_b))
             * math.sqrt(ks) / (2.0 * math.pi * kT) ** 3)
    return -kT * math.log(ratio)


def _angle(a, b, c):
    u, v = a - b, c - b
    return math.degrees(math.atan2(np.linalg.norm(np.cross(u, v)), float(np.dot(u, v))))


def select_boresch_atoms(positions, receptor_atoms, ligand_atoms, bonds, elements, *,
                         distance_range=(0.3, 1.0), angle_range=(45.0, 135.0)):
    """Choose Boresch atoms (r1, r2, r3, l1, l2, l3) from one structure (host, deterministic).

    The rule: heavy atoms only. l1 is the ligand heavy atom closest to the ligand's heavy-atom
    centroid; l2 a heavy atom bonded to l1 and l3 one bonded to l2 (or, failing a chain, the
    next nearest heavy atoms), with the angle l1-l2-l3 inside ``angle_range``. Among the chains
    r1-r2-r3 of bonded receptor heavy atoms with |r3 l1| in ``distance_range`` [nm] and the
    angles r1-r2-r3, (r2, r3, l1) and (r3, l1, l2) inside ``angle_range`` [deg], take the one
    whose two restraint angles are closest to 90 deg (the sum of |angle - 90|), ties to the
    lowest indices. Angles far from 0 and 180 deg keep sin(theta) and the dihedrals
    well-conditioned (a near-linear angle makes the correction diverge).

    Args:
        positions: (N, 3) [nm]; receptor_atoms, ligand_atoms: index lists;
        bonds: (B, 2) bonded pairs (``system.topology.bonds``); elements: (N,) atomic numbers.

    Raises:
        InputError: no acceptable atoms (fewer than three heavy atoms in a chain, or no receptor
            chain in range): give the six atoms yourself.
    """
    x = np.asarray(positions, np.float64)
    elements = np.asarray(elements)
    neighbours = {}
    for i, j in np.asarray(bonds).reshape(-1, 2):
        neighbours.setdefault(int(i), []).append(int(j))
        neighbours.setdefault(int(j), []).append(int(i))
    heavy_ligand = [int(i) for i in np.asarray(ligand_atoms).reshape(-1) if elements[i] > 1]
    heavy_receptor = {int(i) for i in np.asarray(receptor_atoms).reshape(-1) if elements[i] > 1}
    if len(heavy_ligand) < 3:
        raise InputError("automatic Boresch atoms need three ligand heavy atoms: pass atoms=(r1, r2, r3, l1, l2, l3)")
    lo, hi = angle_range
    centroid = x[heavy_ligand].mean(axis=0)
    l1 = min(heavy_ligand, key=lambda i: (np.linalg.norm(x[i] - centroid), i))
    ligand_set = set(heavy_ligand)
    by_distance = sorted((i for i in heavy_ligand if i != l1), key=lambda i: (np.linalg.norm(x[i] - x[l1]), i))
    ligand_chains = [(l2, l3) for l2 in by_distance for l3 in by_distance
                     if l3 != l2 and lo <= _angle(x[l1], x[l2], x[l3]) <= hi]
    bonded = [(l2, l3) for l2, l3 in ligand_chains
              if l2 in neighbours.get(l1, []) and l3 in neighbours.get(l2, []) and l3 in ligand_set]
    if not (bonded or ligand_chains):
        raise InputError("no three non-collinear ligand heavy atoms: pass atoms=(r1, r2, r3, l1, l2, l3)")
    l2, l3 = (bonded or ligand_chains)[0]
    best = None
    for r3 in sorted(heavy_receptor):
        if not distance_range[0] <= np.linalg.norm(x[r3] - x[l1]) <= distance_range[1]:
            continue
        theta_b = _angle(x[r3], x[l1], x[l2])
        if not lo <= theta_b <= hi:
            continue
        for r2 in sorted(j for j in neighbours.get(r3, []) if j in heavy_receptor):
            theta_a = _angle(x[r2], x[r3], x[l1])
            if not lo <= theta_a <= hi:
                continue
            for r1 in sorted(j for j in neighbours.get(r2, []) if j in heavy_receptor and j != r3):
                if not lo <= _angle(x[r1], x[r2], x[r3]) <= hi:
                    continue
                score = (abs(theta_a - 90.0) + abs(theta_b - 90.0), r3, r2, r1)
                if best is None or score < best[0]:
                    best = (score, (r1, r2, r3))
    if best is None:
        raise InputError(f"no bonded receptor heavy-atom chain r1-r2-r3 with |r3 l1| in {distance_range} nm and "
                         f"angles in {angle_range} deg: pass atoms=(r1, r2, r3, l1, l2, l3)")
    return np.array([*best[1], l1, l2, l3], np.int64)
