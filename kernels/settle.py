"""SETTLE: the analytic solution of the three distance constraints of a rigid 3-site water.

Positions follow Miyamoto & Kollman, J. Comput. Chem. 13, 952 (1992), as
OpenMM's ReferenceSETTLEAlgorithm applies it; velocities solve the 3x3 RATTLE
system of the three constraint impulses exactly (any three masses). Both are
closed-form, so ``jit``, ``vmap`` and ``grad`` go straight through. Padding
entries (mask False) compute on a valid dummy water, so neither they nor their
gradients produce NaN, and add zero to every atom.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .geometry import minimum_image


def _gather(positions, index):
    return positions[index]

# A water geometry that is valid for SETTLE; masked (padding) entries compute on it so that no
# NaN is produced anywhere, not even in branches that are discarded (NaN would poison gradients).
_DUMMY_REL = np.array([[0.0, 0.0, 0.0], [0.09572, 0.0, 0.0], [-0.0239987, 0.0926627, 0.0]])
_DUMMY_DIST = np.array([0.09572, 0.15139])


def _cross(a, b):
    return jnp.cross(a, b)


def _unit(v):
    return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True))


def _dot(a, b):
    return jnp.sum(a * b, axis=-1)


def settle_positions(reference, positions, inv_masses, water, distances, mask=None, box=None):
    """Move each water of ``positions`` onto its rigid geometry (SETTLE).

    The displacement from ``positions`` (unconstrained) to the result is a
    combination of the bond vectors of ``reference`` (the constrained positions
    at the start of the step), weighted by inverse masses, as in SHAKE, but
    solved in closed form. Centre of mass and the positions of all other atoms
    are unchanged; a water that already satisfies its constraints stays where
    it is.

    Args:
        reference: (N, 3) constrained positions at the start of the step [nm].
        positions: (N, 3) unconstrained new positions [nm].
        inv_masses: (N,) inverse masses [1/amu]; the two hydrogens of a water must
            be equally heavy and no water atom may have inverse mass 0.
        water: (W, 3) int indices (O, H, H).
        distances: (W, 2) O-H and H-H distances [nm].
        mask: (W,) bool, False for padding (default: all True).
        box: (3, 3) periodic box [nm] or None; bond vectors use the minimum image.

    Returns:
        (N, 3) constrained positions [nm].
    """
    if water.shape[0] == 0:
        return positions
    reference, positions = jnp.asarray(reference), jnp.asarray(positions)
    reference = reference.astype(positions.dtype)
    distances = jnp.asarray(distances, positions.dtype)
    inv_masses = jnp.asarray(inv_masses, positions.dtype)
    if mask is None:
        mask = jnp.ones(water.shape[0], bool)
    dtype = positions.dtype
    m = mask[:, None, None]
    ref = _gather(reference, water)  # (W, 3, 3)
    new = _gather(positions, water)
    # Everything relative to the reference oxygen, bond vectors by minimum image, so waters
    # split across a periodic boundary are handled; each atom's own move needs no image.
    rel0 = minimum_image(ref - ref[:, :1], box)
    rel1 = rel0 + (new - ref)
    rel0 = jnp.where(m, rel0, jnp.asarray(_DUMMY_REL, dtype))
    rel1 = jnp.where(m, rel1, jnp.asarray(_DUMMY_REL, dtype))
    dist = jnp.where(mask[:, None], distances, jnp.asarray(_DUMMY_DIST, dtype))
    invm = jnp.where(m[..., 0], inv_masses[water], 1.0)
    w = (1.0 / invm) / jnp.sum(1.0 / invm, axis=1, keepdims=True)  # mass fractions (W, 3)

    com = jnp.sum(w[..., None] * rel1, axis=1)  # centre of mass of the new positions
    a1, b1, c1 = (rel1[:, i] - com for i in range(3))
    b0, c0 = rel0[:, 1], rel0[:, 2]

    # Frame: z normal to the old molecular plane, x perpendicular to z and to the new O.
    ez = _unit(_cross(b0, c0))
    ex = _unit(_cross(a1, ez))
    ey = _cross(ez, ex)
    frame = jnp.stack([ex, ey, ez], axis=1)  # rows are the axes (W, 3, 3)

    def to_frame(v):
        return jnp.einsum("wij,wj->wi", frame, v)

    b0d, c0d = to_frame(b0), to_frame(c0)
    a1d, b1d, c1d = to_frame(a1), to_frame(b1), to_frame(c1)

    # Canonical water: O at distance ra from the centre of mass along the bisector, the
    # H-H midpoint at rb on the other side, half H-H distance rc.
    d_oh, d_hh = dist[:, 0], dist[:, 1]
    rc = 0.5 * d_hh
    height = jnp.sqrt(d_oh * d_oh - rc * rc)
    ra = height * (w[:, 1] + w[:, 2])
    rb = height - ra

    # Tilt of the canonical water out of the frame's xy plane, matching the new z components
    # (constraint displacements lie in the old plane, so z components are kept).
    sin_phi = a1d[:, 2] / ra
    cos_phi = jnp.sqrt(1.0 - sin_phi * sin_phi)
    sin_psi = (b1d[:, 2] - c1d[:, 2]) / (2.0 * rc * cos_phi)

    ya2 = ra * cos_phi
    yb2 = -rb * cos_phi - rc * sin_psi * sin_phi
    yc2 = -rb * cos_phi + rc * sin_psi * sin_phi
    # x of H: -rc cos(psi) in exact arithmetic; taken from the H-H distance itself so that
    # rounding cannot leave the H-H constraint violated.
    dy, dz = yb2 - yc2, b1d[:, 2] - c1d[:, 2]
    xb2 = -0.5 * jnp.sqrt(jnp.maximum(d_hh * d_hh - dy * dy - dz * dz, 0.0))

    # Rotation theta about z fixed by the torque condition: constraint forces act along the
    # old bonds, so sum_i m_i r_i0 x (r_i3 - r_i1) = 0 (oxygen at the origin drops out and the
    # equal hydrogen masses factor out): alpha sin + beta cos = gamma.
    alpha = xb2 * (b0d[:, 0] - c0d[:, 0]) + b0d[:, 1] * yb2 + c0d[:, 1] * yc2
    beta = xb2 * (c0d[:, 1] - b0d[:, 1]) + b0d[:, 0] * yb2 + c0d[:, 0] * yc2
    gamma = (b0d[:, 0] * b1d[:, 1] - b1d[:, 0] * b0d[:, 1]
             + c0d[:, 0] * c1d[:, 1] - c1d[:, 0] * c0d[:, 1])
    ab2 = alpha * alpha + beta * beta
    sin_t = (alpha * gamma - beta * jnp.sqrt(ab2 - gamma * gamma)) / ab2
    cos_t = jnp.sqrt(1.0 - sin_t * sin_t)

    a3 = jnp.stack([-ya2 * sin_t, ya2 * cos_t, a1d[:, 2]], -1)
    b3 = jnp.stack([xb2 * cos_t - yb2 * sin_t, xb2 * sin_t + yb2 * cos_t, b1d[:, 2]], -1)
    c3 = jnp.stack([-xb2 * cos_t - yc2 * sin_t, -xb2 * sin_t + yc2 * cos_t, c1d[:, 2]], -1)
    rel3 = jnp.stack([a3, b3, c3], axis=1)
    rel3 = jnp.einsum("wji,wkj->wki", frame, rel3) + com[:, None]  # back to the lab frame
    delta = jnp.where(m, rel3 - rel1, 0.0)
    # scatter-add of the moves: padding entries add zero, even if their indices repeat
    return positions.at[water.reshape(-1)].add(delta.reshape(-1, 3))


def _solve3(a, b):
    """Solve batched 3x3 systems a x = b by Cramer's rule (a: (W, 3, 3), b: (W, 3)).

    Cheaper to compile and run than a batched LU for these tiny, well-conditioned
    systems (the matrix of a water is symmetric positive definite).
    """
    c0 = jnp.cross(a[:, 1], a[:, 2])
    c1 = jnp.cross(a[:, 2], a[:, 0])
    c2 = jnp.cross(a[:, 0], a[:, 1])
    det = _dot(a[:, 0], c0)
    # x = adj(a) b / det; the adjugate's columns are the cross products above
    return (c0 * b[:, 0:1] + c1 * b[:, 1:2] + c2 * b[:, 2:3]) / det[:, None]


def _rigid_triangle_velocities(positions, velocities, inv_masses, water, mask, box):
    """Exact RATTLE velocity correction for triangles of constraints (W, 3 atoms)."""
    dtype = positions.dtype
    m = mask[:, None, None]
    x = _gather(positions, water)
    v = _gather(velocities, water)
    rel = minimum_image(x - x[:, :1], box)
    rel = jnp.where(m, rel, jnp.asarray(_DUMMY_REL, dtype))
    invm = jnp.where(m[..., 0], inv_masses[water], 1.0)
    # constraints k = (0,1), (1,2), (2,0) with unit directions e_k from first to second atom
    first, second = np.array([0, 1, 2]), np.array([1, 2, 0])
    e = _unit(rel[:, second] - rel[:, first])  # (W, 3, 3)
    # incidence s[k, i] = +1 if atom i is the second atom of k, -1 if the first
    s = np.zeros((3, 3))
    s[np.arange(3), second] = 1.0
    s[np.arange(3), first] = -1.0
    # A[k, l] = e_k . e_l * sum_i s[k, i] s[l, i] invm_i: change of the k-th relative velocity
    # along e_k per unit impulse along constraint l
    coupling = jnp.einsum("ki,li,wi->wkl", s, s, invm)
    a_mat = coupling * jnp.einsum("wkx,wlx->wkl", e, e)
    vrel = jnp.einsum("ki,wix->wkx", s, v)
    rhs = -_dot(e, vrel)
    rhs = jnp.where(mask[:, None], rhs, 0.0)
    t = _solve3(a_mat, rhs)  # impulses (W, 3)
    dv = invm[..., None] * jnp.einsum("ki,wk,wkx->wix", s, t, e)
    dv = jnp.where(m, dv, 0.0)
    return velocities.at[water.reshape(-1)].add(dv.reshape(-1, 3))


def settle_velocities(positions, velocities, inv_masses, water, mask=None, box=None):
    """Remove the velocity components that would change any water's O-H or H-H distance.

    Solves the 3x3 linear system of the three constraint impulses exactly (no
    iteration), so the result holds for any three masses.

    Args:
        positions: (N, 3) constrained positions [nm].
        velocities: (N, 3) velocities [nm/ps].
        inv_masses: (N,) inverse masses [1/amu].
        water: (W, 3) int indices (O, H, H).
        mask: (W,) bool, False for padding.
        box: (3, 3) box [nm] or None.

    Returns:
        (N, 3) velocities [nm/ps].
    """
    if water.shape[0] == 0:
        return velocities
    positions, velocities = jnp.asarray(positions), jnp.asarray(velocities)
    positions = positions.astype(velocities.dtype)
    inv_masses = jnp.asarray(inv_masses, velocities.dtype)
    if mask is None:
        mask = jnp.ones(water.shape[0], bool)
    return _rigid_triangle_velocities(positions, velocities, inv_masses, water, mask, box)


