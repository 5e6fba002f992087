"""Holonomic distance constraints: SETTLE for rigid waters, SHAKE/RATTLE for the rest.

Everything here is a pure function of arrays, so ``jit``, ``vmap`` and ``grad``
go through it:

- ``settle_positions`` / ``settle_velocities`` (from ``settle``, re-exported):
  the analytic SETTLE solution of Miyamoto & Kollman (J. Comput. Chem. 13, 952
  (1992)) for 3-site rigid waters, as OpenMM's ReferenceSETTLEAlgorithm applies
  it (velocities by solving the 3x3 RATTLE system exactly).
- ``shake_positions`` / ``rattle_velocities``: iterative solvers for arbitrary
  bond-length constraints, all constraints updated at once (Jacobi-style SHAKE
  with the Newton diagonal; preconditioned conjugate gradients for the linear
  velocity problem), atom sums by scatter-adds, a fixed iteration cap inside a
  ``lax.while_loop`` and a convergence flag that is returned, never raised.
  Their derivatives come from the implicit function theorem (``lax.custom_root``
  and ``lax.custom_linear_solve``), so reverse-mode gradients flow through a
  converged solve without differentiating the iterations.

Virtual sites: a ``Constraints`` set may carry the system's massless virtual sites
(``kernels.virtual_sites``); ``constrain_positions`` places them after the distance
constraints, as OpenMM does after every constraint step, so trajectories and neighbor
lists see them where they belong.

Padding: every constraint has a mask; masked entries (padding for ensembles of
systems of different sizes) touch no atom. Atoms with inverse mass 0 never
move. Constraint tolerances follow OpenMM: a position constraint is satisfied
when ``|r| / d`` lies in ``[1 - tol, 1 + tol]``.

Host-side set-up (which bonds become constraints, water detection, degrees of
freedom, hydrogen mass repartitioning) lives in ``constraint_setup``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from .geometry import minimum_image
from .settle import settle_positions, settle_velocities
from .virtual_sites import VirtualSites, place

__all__ = [
    "Constraints", "settle_positions", "settle_velocities", "shake_positions", "rattle_velocities",
    "constrain_positions", "constrain_velocities", "constraint_deviations", "constraint_velocity_errors",
]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["water", "water_distances", "water_mask", "pairs", "lengths", "pair_mask", "virtual_sites"],
    meta_fields=["tolerance", "velocity_tolerance", "max_iterations"],
)
@dataclasses.dataclass(frozen=True)
class Constraints:
    """A set of distance constraints (a pytree; build it with ``build_constraints``).

    Attributes:
        water: (W, 3) int32 atom indices (oxygen, hydrogen, hydrogen) of rigid waters
            solved by SETTLE. The two hydrogens must have equal masses.
        water_distances: (W, 2) O-H and H-H distances [nm].
        water_mask: (W,) bool, False for padding entries.
        pairs: (C, 2) int32 atom pairs whose distance is fixed (SHAKE/RATTLE).
        lengths: (C,) constrained distances [nm].
        pair_mask: (C,) bool, False for padding entries.
        tolerance: relative position tolerance (static; OpenMM's default 1e-5).
        velocity_tolerance: largest remaining relative rate of change of a
            constrained length, |d(r)/dt| / d [1/ps] (static).
        max_iterations: iteration cap of the SHAKE and RATTLE solvers (static).
        virtual_sites: massless sites placed after the constraints, or None.
    """

    water: jax.Array
    water_distances: jax.Array
    water_mask: jax.Array
    pairs: jax.Array
    lengths: jax.Array
    pair_mask: jax.Array
    tolerance: float = 1e-5
    velocity_tolerance: float = 1e-5
    max_iterations: int = 150
    virtual_sites: VirtualSites | None = None

    @property
    def n_constraints(self) -> int:
        """Number of real (unmasked) distance constraints, 3 per water (host-side)."""
        return int(3 * np.sum(np.asarray(self.water_mask)) + np.sum(np.asarray(self.pair_mask)))


# ---------------------------------------------------------------------------------------------
# SHAKE / RATTLE for general pairs
# ---------------------------------------------------------------------------------------------


def _pair_terms(pairs, mask, inv_masses):
    i, j = pairs[:, 0], pairs[:, 1]
    w = jnp.where(mask, inv_masses[i] + inv_masses[j], 1.0)
    return i, j, w


def _impulse_moves(coef, vec, i, j, inv_masses, n_atoms):
    """Atom moves invm * sum_k coef_k vec_k (+ on the second atom of k, - on the first)."""
    push = coef[:, None] * vec
    acc = jnp.zeros((n_atoms, vec.shape[-1]), vec.dtype)
    acc = acc.at[j].add(push).at[i].add(-push)
    return inv_masses[:, None] * acc


#: the SHAKE tolerance is at least this many machine epsilons of the positions' dtype
_TOLERANCE_FLOOR_ULPS = 16


def shake_positions(reference, positions, inv_masses, pairs, lengths, mask=None, box=None,
                    tolerance=1e-5, max_iterations=150):
    """Fix the distance of every pair (SHAKE), moving atoms along the reference bonds.

    Finds multipliers lambda so that ``positions + invm * sum_k lambda_k
    (+/-) s_k``, with ``s_k`` the reference bond vector of pair k, satisfies
    every constraint to ``tolerance`` (relative). All constraints are updated at
    once with the Newton diagonal (SHAKE's update, applied simultaneously). The
    iterations work on bond vectors in displacement form (unconstrained bond
    vector plus accumulated moves), never on absolute coordinates, so float32
    rounding of coordinates a few nm from the origin does not enter the test;
    once converged, one more sweep leaves every length well inside the window.

    Gradients (reverse and forward) are exact derivatives of the converged
    solution (implicit function theorem), not of the iterations.

    Args:
        reference: (N, 3) constrained positions at the start of the step [nm].
        positions: (N, 3) unconstrained new positions [nm].
        inv_masses: (N,) inverse masses [1/amu] (0: the atom does not move).
        pairs: (C, 2) int atom pairs.
        lengths: (C,) target distances [nm].
        mask: (C,) bool, False for padding.
        box: (3, 3) box [nm] or None.
        tolerance: relative tolerance on each distance (raised to at least 16
            machine epsilons of the positions' dtype: 1.9e-6 in float32). The
            returned float32 positions are rounded to their own precision after
            the solve (about 6e-8 times their magnitude per coordinate).
        max_iterations: iteration cap.

    Returns:
        ``(positions, converged)``: (N, 3) constrained positions [nm] and a bool
        scalar, False when the cap was reached first.
    """
    if pairs.shape[0] == 0:
        return positions, jnp.asarray(True)
    reference, positions = jnp.asarray(reference), jnp.asarray(positions)
    # solve in the dtype of the positions (float64 lengths must not promote a float32 run)
    inv_masses = jnp.asarray(inv_masses, positions.dtype)
    lengths = jnp.asarray(lengths, positions.dtype)
    reference = reference.astype(positions.dtype)
    if mask is None:
        mask = jnp.ones(pairs.shape[0], bool)
    n_atoms = positions.shape[0]
    i, j, w = _pair_terms(pairs, mask, inv_masses)
    s = minimum_image(reference[j] - reference[i], box)
    s = jnp.where(mask[:, None], s, jnp.asarray([1.0, 0.0, 0.0], s.dtype))
    q0 = minimum_image(positions[j] - positions[i], box)
    d2 = jnp.where(mask, lengths * lengths, jnp.sum(s * s, -1))

    def moves(lam):
        return _impulse_moves(lam, s, i, j, inv_masses, n_atoms)

    def current(lam):
        dx = moves(lam)
        return q0 + dx[j] - dx[i]

    def scaled_error(lam, q):
        # scaled so that d residual_k / d lambda_k is about 1 near the solution
        g = (jnp.sum(q * q, -1) - d2) / (2.0 * d2 * w)
        return jnp.where(mask, g, lam)

    def residual(lam):
        return scaled_error(lam, current(lam))

    # A window narrower than a few rounding units of |q|^2 / d^2 could never be met reliably
    # (float32: eps = 1.2e-7); the default 1e-5 is far above this floor in either precision.
    tolerance = max(float(tolerance), _TOLERANCE_FLOOR_ULPS * float(jnp.finfo(positions.dtype).eps))
    lo, hi = (1.0 - tolerance) ** 2, (1.0 + tolerance) ** 2

    def within(q):
        r2 = jnp.sum(q * q, -1) / d2
        return jnp.all(jnp.where(mask, (r2 >= lo) & (r2 <= hi), True))

    def newton_step(lam, q):
        # the residual from q already at hand (one scatter pass per sweep, not two)
        newton = jnp.sum(q * s, -1) / d2  # exact diagonal, in the scaled units
        newton = jnp.where(mask, newton, 1.0)
        return lam - scaled_error(lam, q) / newton

    def solve(f, lam0):
        def cond(c):
            _, it, done = c
            return jnp.logical_and(it < max_iterations, jnp.logical_not(done))

        def body(c):
            lam, it, _ = c
            q = current(lam)
            ok = within(q)
            lam_new = jnp.where(ok, lam, newton_step(lam, q))
            return lam_new, it + jnp.where(ok, 0, 1), ok

        lam, _, done = jax.lax.while_loop(cond, body, (lam0, jnp.asarray(0), jnp.asarray(False)))
        # The loop's own test is the verdict. Re-testing the final iterate here (as this
        # once did) could disagree with it in float32: XLA fuses the two evaluations of q
        # differently, and a length that ended within an ulp of the window's edge flipped
        # to "not converged" (about once per few hundred T4L steps in single precision).
        # One more Newton sweep from the converged iterate then moves every length well
        # inside the window (quadratic convergence), so that the rounding of the returned
        # positions, not the stopping point, is what is left of the error.
        lam = jnp.where(done, newton_step(lam, current(lam)), lam)
        # a float flag: custom_root differentiates its auxiliary output too, and a bool
        # output would need a float0 tangent
        return lam, done.astype(lam.dtype)

    lam0 = jnp.zeros(pairs.shape[0], positions.dtype)
    rich = functools.partial(_richardson, max_iterations=max_iterations)

    def tangent_solve(g, y):
        # wrapped in custom_linear_solve so that reverse mode transposes the linear solve
        # (solving the adjoint system) instead of trying to transpose the iterations
        return jax.lax.custom_linear_solve(g, y, rich, rich)

    lam, converged = jax.lax.custom_root(residual, lam0, solve, tangent_solve, has_aux=True)
    return positions + moves(lam), jax.lax.stop_gradient(converged) > 0.5


def _richardson(linear_fn, rhs, max_iterations):
    """Solve linear_fn(x) = rhs for an operator close to the identity (Jacobi-scaled).

    Used for the tangent (and, transposed, the adjoint) of the SHAKE solve, whose
    residual is scaled so that its Jacobian has a unit diagonal.
    """
    scale = jnp.maximum(jnp.max(jnp.abs(rhs)), jnp.finfo(rhs.dtype).tiny)
    eps = 64 * jnp.finfo(rhs.dtype).eps

    def cond(c):
        x, r, it = c
        return jnp.logical_and(it < 4 * max_iterations, jnp.max(jnp.abs(r)) > eps * scale)

    def body(c):
        x, r, it = c
        x = x + r
        return x, rhs - linear_fn(x), it + 1

    x, _, _ = jax.lax.while_loop(cond, body, (jnp.zeros_like(rhs), rhs, jnp.asarray(0)))
    return x


def rattle_velocities(positions, velocities, inv_masses, pairs, mask=None, box=None,
                      tolerance=1e-5, max_iterations=150):
    """Remove the velocity components that would change any constrained distance (RATTLE).

    Solves for the impulses t (one per constraint) with ``J M^-1 J^T t = -J v``,
    J the unit bond directions at ``positions``: a symmetric positive definite
    system, solved by Jacobi-preconditioned conjugate gradients inside
    ``lax.custom_linear_solve`` (exact implicit derivatives).

    Args:
        positions: (N, 3) constrained positions [nm].
        velocities: (N, 3) velocities [nm/ps].
        inv_masses: (N,) inverse masses [1/amu].
        pairs: (C, 2) int atom pairs.
        mask: (C,) bool, False for padding.
        box: (3, 3) box [nm] or None.
        tolerance: largest remaining |d(r_k)/dt| / r_k [1/ps].
        max_iterations: iteration cap.

    Returns:
        ``(velocities, converged)``.
    """
    if pairs.shape[0] == 0:
        return velocities, jnp.asarray(True)
    positions, velocities = jnp.asarray(positions), jnp.asarray(velocities)
    inv_masses = jnp.asarray(inv_masses, velocities.dtype)
    positions = positions.astype(velocities.dtype)
    if mask is None:
        mask = jnp.ones(pairs.shape[0], bool)
    n_atoms = positions.shape[0]
    i, j, w = _pair_terms(pairs, mask, inv_masses)
    r = minimum_image(positions[j] - positions[i], box)
    r = jnp.where(mask[:, None], r, jnp.asarray([1.0, 0.0, 0.0], r.dtype))
    length = jnp.sqrt(jnp.sum(r * r, -1))
    e = r / length[:, None]
    mf = mask.astype(positions.dtype)

    def matvec(t):
        dv = _impulse_moves(t * mf, e, i, j, inv_masses, n_atoms)
        out = jnp.sum(e * (dv[j] - dv[i]), -1)
        return jnp.where(mask, out, t)  # padding rows: identity

    rhs = jnp.where(mask, -jnp.sum(e * (velocities[j] - velocities[i]), -1), 0.0)
    limit = tolerance * length

    def cg(mv, b):
        # preconditioned conjugate gradients with the exact diagonal w = invm_i + invm_j
        def cond(c):
            _, res, _, _, it = c
            return jnp.logical_and(it < max_iterations, jnp.any(jnp.abs(res) > limit))

        def body(c):
            x, res, p, rz, it = c
            ap = mv(p)
            alpha = rz / jnp.sum(p * ap)
            x = x + alpha * p
            res = res - alpha * ap
            z = res / w
            rz_new = jnp.sum(res * z)
            p = z + (rz_new / rz) * p
            return x, res, p, rz_new, it + 1

        z0 = b / w
        rz0 = jnp.sum(b * z0)
        # an all-zero right-hand side is already solved (and would divide 0 by 0)
        safe = rz0 > 0
        state0 = (jnp.zeros_like(b), b, z0, jnp.where(safe, rz0, 1.0), jnp.asarray(0))
        x, res, _, _, _ = jax.lax.while_loop(
            lambda c: jnp.logical_and(safe, cond(c)), body, state0)
        return x, jnp.all(jnp.abs(res) <= limit)

    t, converged = jax.lax.custom_linear_solve(matvec, rhs, cg, symmetric=True, has_aux=True)
    dv = _impulse_moves(t * mf, e, i, j, inv_masses, n_atoms)
    return velocities + dv, converged


# ---------------------------------------------------------------------------------------------
# Both kinds together
# ---------------------------------------------------------------------------------------------


def constrain_positions(constraints: Constraints | None, reference, positions, inv_masses,
                        box=None):
    """Apply every constraint to new positions (SETTLE for waters, SHAKE for pairs), then
    place the virtual sites.

    Args:
        constraints: the constraint set, or None (no constraints).
        reference: (N, 3) constrained positions at the start of the step [nm].
        positions: (N, 3) unconstrained new positions [nm].
        inv_masses: (N,) inverse masses [1/amu].
        box: (3, 3) box [nm] or None.

    Returns:
        ``(positions, converged)``; ``converged`` is a bool scalar.
    """
    if constraints is None:
        return positions, jnp.asarray(True)
    c = constraints
    positions = settle_positions(reference, positions, inv_masses, c.water, c.water_distances,
                                 c.water_mask, box)
    positions, converged = shake_positions(reference, positions, inv_masses, c.pairs, c.lengths, c.pair_mask,
                                           box, c.tolerance, c.max_iterations)
    return place(positions, c.virtual_sites), converged


def constrain_velocities(constraints: Constraints | None, positions, velocities, inv_masses,
                         box=None):
    """Remove velocity components along every constraint (SETTLE and RATTLE).

    Returns:
        ``(velocities, converged)``.
    """
    if constraints is None:
        return velocities, jnp.asarray(True)
    c = constraints
    velocities = settle_velocities(positions, velocities, inv_masses, c.water, c.water_mask, box)
    return rattle_velocities(positions, velocities, inv_masses, c.pairs, c.pair_mask, box,
                             c.velocity_tolerance, c.max_iterations)


def constraint_deviations(constraints: Constraints, positions, box=None):
    """Relative deviations |r| / d - 1 of every constraint (padding entries give 0).

    Returns:
        ``(water_dev, pair_dev)``: (W, 3) deviations of O-H1, O-H2, H1-H2 and (C,).
    """
    c = constraints
    x = positions[c.water]
    r = minimum_image(x[:, [1, 2, 2]] - x[:, [0, 0, 1]], box)
    d = c.water_distances[:, [0, 0, 1]]
    wdev = jnp.sqrt(jnp.sum(r * r, -1)) / jnp.where(c.water_mask[:, None], d, 1.0) - 1.0
    wdev = jnp.where(c.water_mask[:, None], wdev, 0.0)
    rp = minimum_image(positions[c.pairs[:, 1]] - positions[c.pairs[:, 0]], box)
    pdev = jnp.sqrt(jnp.sum(rp * rp, -1)) / jnp.where(c.pair_mask, c.lengths, 1.0) - 1.0
    return wdev, jnp.where(c.pair_mask, pdev, 0.0)


def constraint_velocity_errors(constraints: Constraints, positions, velocities, box=None):
    """Relative rates |d(r)/dt| / r [1/ps] of every constraint: (W, 3) and (C,)."""
    c = constraints
    x, v = positions[c.water], velocities[c.water]
    a, b = [0, 0, 1], [1, 2, 2]
    r = minimum_image(x[:, b] - x[:, a], box)
    r2 = jnp.where(c.water_mask[:, None], jnp.sum(r * r, -1), 1.0)
    wv = jnp.abs(jnp.sum(r * (v[:, b] - v[:, a]), -1)) / r2
    p, q = c.pairs[:, 0], c.pairs[:, 1]
    rp = minimum_image(positions[q] - positions[p], box)
    rp2 = jnp.where(c.pair_mask, jnp.sum(rp * rp, -1), 1.0)
    pv = jnp.abs(jnp.sum(rp * (velocities[q] - velocities[p]), -1)) / rp2
    return (jnp.where(c.water_mask[:, None], wv, 0.0), jnp.where(c.pair_mask, pv, 0.0))
