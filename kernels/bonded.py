"""Bonded energy terms: harmonic bonds and angles, periodic torsions.

Conventions follow OpenMM (HarmonicBondForce, HarmonicAngleForce,
PeriodicTorsionForce), so parameters read from Amber files are converted once
at the io boundary:

- bond:    E = 1/2 k (r - r0)^2,          k [kJ/mol/nm^2], r0 [nm]
- angle:   E = 1/2 k (theta - theta0)^2,  k [kJ/mol/rad^2], theta0 [rad]
- torsion: E = k (1 + cos(n phi - phase)), k [kJ/mol], n integer, phase [rad]

Positions are not wrapped: like OpenMM's bonded forces, displacements are
taken as they are, unless a box is given (then the minimum image is used,
which agrees for whole molecules and stays right if molecules are wrapped).
Each function returns the summed energy in the dtype of its inputs.
"""

from __future__ import annotations

import jax.numpy as jnp

from .geometry import minimum_image, safe_norm


def _vec(positions, box, i, j):
    """Displacement r_j - r_i for index arrays i, j [nm]."""
    return minimum_image(positions[j] - positions[i], box)


def bond_energy(positions, box, idx, k, r0):
    """Harmonic bond energy [kJ/mol].

    Args:
        positions: (N, 3) [nm].
        box: (3, 3) [nm] or None.
        idx: (B, 2) int atom pairs.
        k: (B,) force constants [kJ/mol/nm^2].
        r0: (B,) equilibrium lengths [nm].
    """
    r = safe_norm(_vec(positions, box, idx[:, 0], idx[:, 1]))
    return 0.5 * jnp.sum(k * (r - r0) ** 2)


def bond_angles(positions, box, idx):
    """Angles theta [rad] at the middle atom of (A, 3) triples, finite-gradient at 0 and pi."""
    u = _vec(positions, box, idx[:, 1], idx[:, 0])
    v = _vec(positions, box, idx[:, 1], idx[:, 2])
    # atan2(|u x v|, u.v) keeps gradients finite at linear angles, unlike arccos
    return jnp.arctan2(safe_norm(jnp.cross(u, v)), jnp.sum(u * v, axis=-1))


def angle_energy(positions, box, idx, k, theta0):
    """Harmonic angle energy [kJ/mol]; idx (A, 3), k [kJ/mol/rad^2], theta0 [rad]."""
    theta = bond_angles(positions, box, idx)
    return 0.5 * jnp.sum(k * (theta - theta0) ** 2)


def dihedral_angles(positions, box, idx):
    """Dihedral angles phi [rad] in (-pi, pi] of (D, 4) quadruples, IUPAC/OpenMM sign.

    phi = atan2(|b2| b1 . (b2 x b3), (b1 x b2) . (b2 x b3)) with b1 = r1 - r0,
    b2 = r2 - r1, b3 = r3 - r2; trans is +-pi.
    """
    b1 = _vec(positions, box, idx[:, 0], idx[:, 1])
    b2 = _vec(positions, box, idx[:, 1], idx[:, 2])
    b3 = _vec(positions, box, idx[:, 2], idx[:, 3])
    n1 = jnp.cross(b1, b2)
    n2 = jnp.cross(b2, b3)
    y = safe_norm(b2) * jnp.sum(b1 * n2, axis=-1)
    x = jnp.sum(n1 * n2, axis=-1)
    # at x = y = 0 (collinear atoms) atan2's gradient is 0/0: nudge x
    degenerate = (x == 0) & (y == 0)
    return jnp.arctan2(y, jnp.where(degenerate, 1.0, x))


def torsion_energy(positions, box, idx, periodicity, k, phase):
    """Periodic torsion energy [kJ/mol] for proper and improper torsions.

    Args:
        idx: (D, 4) int quadruples.
        periodicity: (D,) int multiplicities n.
        k: (D,) barrier heights [kJ/mol].
        phase: (D,) phases [rad].
    """
    phi = dihedral_angles(positions, box, idx)
    return jnp.sum(k * (1.0 + jnp.cos(periodicity.astype(phi.dtype) * phi - phase)))
