"""Local energy minimization (L-BFGS or FIRE): the objective, jitted chunks and the host driver.

``minimize(energy_fn, params, positions, box, neighbors)`` finds a nearby local
minimum of ``energy_fn(params, positions, box, neighbors)`` and stops, as
OpenMM's ``LocalEnergyMinimizer`` does, once the root-mean-square force per atom,
sqrt(sum_i |F_i|^2 / N), is at most ``tolerance`` [kJ/mol/nm]. (OpenMM's
documentation speaks of "all force components", but both its reference L-BFGS
and its GPU kernel test |g| <= tolerance * sqrt(N_atoms), the per-atom
quantity used here; it is sqrt(3) stricter than the RMS over components.)

How it runs: the iterations happen inside ``jax.jit`` in chunks (a
``lax.while_loop`` that also stops at convergence); the host loop between
chunks checks the neighbor table. Each energy evaluation first refreshes the
table with ``update_neighbors``; when its ``overflow`` flag is set at the end of
a chunk, the table is re-allocated on the host from the chunk's starting
positions (with room for the occupancy it ``needed``, by the engine's one table
service and margin policy, ``diffmd.md.reallocate``) and the chunk is redone,
so no energy ever comes from a table that was too small. ``neighbors`` may also be
a tuple (any pytree) of tables, as a ``sum_potentials`` model takes: every table
is refreshed, the chunk stops when any overflows, and only the tables that
overflowed are re-allocated.

``method="fire"`` runs FIRE instead (``_fire.py``); the L-BFGS iterations are in ``_lbfgs.py``.

Constraints follow OpenMM's recipe (``LocalEnergyMinimizer.cpp``): the starting
positions are projected onto the constraints, a harmonic penalty
0.5 k (r - d)^2 with k = 100 / tol [kJ/mol/nm^2] (tol = max(1e-4, constraint
tolerance)) is added for every constrained distance, and k grows tenfold until
the minimum satisfies every constraint to |r - d| <= tol [nm] (starting again
from the initial positions if the error exceeded 100 tol); a final SHAKE/SETTLE
projection then meets the constraints' own (relative) tolerance. The stages
measure the error as a distance, as OpenMM does: measured relative to d (10x
stricter for 0.1 nm bonds) a first stage on rigid water (1.4e-3 nm, 1.5%) was
thrown away as "too far", and L-BFGS started over from the raw structure with
10x stiffer springs: 2.6x the iterations, and a minimum 95 kJ/mol higher.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._tables import MAX_REALLOCATIONS, any_overflow, neighbor_tables, reallocate, update_tables
from ..kernels.constraints import Constraints, constrain_positions, constrain_velocities, constraint_deviations
from ..kernels.errors import InputError, SimulationError
from ..kernels.neighbors import Neighbors
from ..kernels.precision import cast_floats
from ._fire import FireState, fire_init, fire_iterate
from ._lbfgs import lbfgs_init, lbfgs_iterate

__all__ = ["MinimizeResult", "minimize"]

METHODS = ("lbfgs", "fire")
#: iteration cap used when ``max_iterations=0`` ("until converged")
DEFAULT_MAX_ITERATIONS = 20_000
_CHUNK = 200  # iterations per jitted chunk (traced bound: changing it does not recompile)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["positions", "energy", "rms_force", "max_force", "max_constraint_error", "neighbors"],
                   meta_fields=["iterations", "evaluations", "converged"])
@dataclasses.dataclass(frozen=True)
class MinimizeResult:
    """Outcome of ``minimize``.

    Attributes:
        positions: (N, 3) minimized positions [nm] (constraints applied).
        energy: potential energy at ``positions`` [kJ/mol] (no restraint terms).
        rms_force: sqrt(mean_i |F_i|^2) [kJ/mol/nm] at ``positions``, with forces
            projected onto the constraint surface when there are constraints.
        max_force: largest |F_i| [kJ/mol/nm] of the same forces.
        max_constraint_error: largest relative constraint deviation |r/d - 1|
            (0 without constraints).
        neighbors: the neighbor table (or pytree of tables), current for ``positions`` (None if none).
        iterations: L-BFGS iterations taken (all restraint stages together).
        evaluations: energy and force evaluations (line-search trials included).
        converged: True when the force criterion was met (and the constraints
            satisfied); False when ``max_iterations`` ran out or the line search
            could make no further progress (the precision's limit).
    """

    positions: jax.Array
    energy: jax.Array
    rms_force: jax.Array
    max_force: jax.Array
    max_constraint_error: jax.Array
    neighbors: Any
    iterations: int
    evaluations: int
    converged: bool


# ---------------------------------------------------------------------------------------------
# The objective (traced)
# ---------------------------------------------------------------------------------------------


def _restraint(constraints, x, box, k):
    """0.5 k sum (r - d)^2 over every constrained distance [kJ/mol]."""
    if constraints is None:
        return jnp.zeros((), x.dtype)
    wdev, pdev = constraint_deviations(constraints, x, box)
    dw = wdev * constraints.water_distances[:, jnp.asarray([0, 0, 1])]
    dp = pdev * constraints.lengths
    return 0.5 * k * (jnp.sum(dw * dw) + jnp.sum(dp * dp))


def _objective(energy_fn, params, box, constraints, k, frozen, x, neighbors):
    """(objective, gradient, neighbors) at x, refreshing the neighbor table first."""
    neighbors, _ = update_tables(neighbors, x, box)

    def total(x):
        e = energy_fn(params, x, box, neighbors)
        return e + _restraint(constraints, x, box, k).astype(e.dtype)

    f, g = jax.value_and_grad(total)(x)
    # massless atoms (virtual sites, padding) stay put, as in OpenMM
    g = jnp.where(frozen[:, None], jnp.zeros_like(g), g)
    return f, g, neighbors


def _rms(g):
    return jnp.sqrt(jnp.sum(g * g) / g.shape[0])


# ---------------------------------------------------------------------------------------------
# Jitted entry points
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("energy_fn",))
def _chunk(energy_fn, params, state, box, constraints, k, frozen, tolerance, max_step, stop_at):
    """Iterate until ``stop_at`` iterations, convergence, a stall or a neighbor overflow."""
    objective = functools.partial(_objective, energy_fn, params, box, constraints, k, frozen)

    def cond(s):
        going = s.fresh | ((s.iteration < stop_at) & ~s.converged & ~s.stalled)
        if isinstance(s.neighbors, Neighbors):
            going = going & ~s.neighbors.overflow
        elif s.neighbors is not None:
            for t in neighbor_tables(s.neighbors):
                going = going & ~t.overflow
        return going

    iterate = fire_iterate if isinstance(state, FireState) else lbfgs_iterate

    def body(s):
        s = iterate(objective, s, max_step)
        return s._replace(converged=_rms(s.g) <= tolerance)

    return jax.lax.while_loop(cond, body, state)


@jax.jit
def _project(constraints, x, inv_masses, box):
    return constrain_positions(constraints, x, x, inv_masses, box)


@jax.jit
def _max_distance_error(constraints, x, box):
    """Largest constraint violation |r - d| [nm] (one compiled call, not a string of eager ops)."""
    wdev, pdev = constraint_deviations(constraints, x, box)
    dw = wdev * constraints.water_distances[:, jnp.asarray([0, 0, 1])]
    dp = pdev * constraints.lengths
    return jnp.maximum(jnp.max(jnp.abs(dw), initial=0.0), jnp.max(jnp.abs(dp), initial=0.0))


@jax.jit
def _report(grad, x, box, constraints, frozen):
    """rms and max force and the largest constraint error, forces projected onto the constraints."""
    forces = -grad
    error = jnp.zeros((), x.dtype)
    if constraints is not None:
        # the force left once its components along the constraints are removed
        forces, _ = constrain_velocities(constraints, x, forces, jnp.where(frozen, 0.0, 1.0).astype(x.dtype), box)
        wdev, pdev = constraint_deviations(constraints, x, box)
        error = jnp.maximum(jnp.max(jnp.abs(wdev), initial=0.0), jnp.max(jnp.abs(pdev), initial=0.0))
    per_atom = jnp.sqrt(jnp.sum(forces * forces, axis=1))
    return _rms(forces), jnp.max(per_atom), error


# ---------------------------------------------------------------------------------------------
# Host driver
# ---------------------------------------------------------------------------------------------


def _needed(neighbors):
    if isinstance(neighbors, Neighbors):
        return int(neighbors.needed)
    return [int(t.needed) for t in neighbor_tables(neighbors)]


def _run_stage(method, energy_fn, params, x, box, neighbors, constraints, k, frozen, tolerance, max_step, budget):
    """Minimize energy + restraint(k) from x for at most ``budget`` iterations (host loop over chunks).

    ``budget=0`` only evaluates the objective at x.
    """
    for retry in range(MAX_REALLOCATIONS):
        if not any_overflow(neighbors):
            break
        neighbors = reallocate(neighbors, x, box, retry)
    state = fire_init(x, neighbors) if method == "fire" else lbfgs_init(x, neighbors)
    reallocations = 0
    while bool(state.fresh) or (int(state.iteration) < budget and not bool(state.converged)
                                and not bool(state.stalled)):
        stop_at = jnp.asarray(min(int(state.iteration) + _CHUNK, budget), jnp.int32)
        new = _chunk(energy_fn, params, state, box, constraints, k, frozen, tolerance, max_step, stop_at)
        if any_overflow(new.neighbors):
            # the chunk saw a table too small: its energies are not trusted; redo it with a bigger one
            if reallocations == MAX_REALLOCATIONS:
                raise SimulationError(f"neighbor table kept overflowing during minimization "
                                      f"(needed {_needed(new.neighbors)} partners per atom)")
            state = state._replace(neighbors=reallocate(new.neighbors, state.x, box, reallocations,
                                                        start=state.neighbors))
            reallocations += 1
            continue
        state = new
    if not bool(jnp.isfinite(state.f)):
        raise InputError("the energy at the starting positions is not finite (overlapping atoms?); "
                         "check the coordinates")
    return state


def minimize(energy_fn, params, positions, box=None, neighbors=None, *,
             constraints: Constraints | None = None, masses=None, tolerance: float = 10.0,
             max_iterations: int = 0, method: str = "lbfgs", max_step: float = 0.1) -> MinimizeResult:
    """Minimize the potential energy from ``positions`` to a nearby local minimum.

    Args:
        energy_fn: ``energy_fn(params, positions, box, neighbors) -> kJ/mol``
            (hashable; e.g. from ``System.energy_fn``). Its ``neighbor_list``
            method, when present, re-allocates overflowing tables.
        params: the energy function's parameters.
        positions: (N, 3) starting positions [nm]; they are used in the energy
            function's accumulate dtype when it has a precision policy.
        box: (3, 3) box vectors [nm] or None.
        neighbors: neighbor table for ``positions``, or a tuple (pytree) of
            tables for a ``sum_potentials`` model; allocated with
            ``energy_fn.neighbor_list(positions, box)`` when None and available.
        constraints: distance constraints to satisfy (``build_constraints``), or None.
        masses: (N,) [amu], optional: atoms of mass 0 do not move, and the final
            constraint projection is mass-weighted (unit masses if None).
        tolerance: stop when sqrt(mean_i |F_i|^2) <= tolerance [kJ/mol/nm]
            (OpenMM's criterion, default 10).
        max_iterations: L-BFGS iteration limit; 0 means until converged (capped
            at ``DEFAULT_MAX_ITERATIONS``).
        method: ``"lbfgs"`` (default) or ``"fire"`` (FIRE 2.0: needs no energy
            comparisons, so it is indifferent to float32 round-off, but takes
            several times more iterations).
        max_step: largest distance [nm] any atom may move in one trial step.

    Returns:
        A ``MinimizeResult``.

    Raises:
        InputError: unknown method, bad shapes, NaN positions or a non-finite
            starting energy.
        SimulationError: the neighbor table kept overflowing.

    Example:
        >>> import diffmd
        >>> system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
        >>> params, energy_fn = system.energy_fn(precision="single")
        >>> result = diffmd.minimize(energy_fn, params, system.positions)
        >>> bool(result.rms_force <= 10.0)
        True
    """
    if method not in METHODS:
        raise InputError(f"unknown minimization method {method!r}: choose one of {', '.join(METHODS)}")
    if tolerance <= 0 or not np.isfinite(tolerance):
        raise InputError(f"tolerance must be a positive force [kJ/mol/nm], got {tolerance!r}")
    if max_iterations < 0:
        raise InputError(f"max_iterations must be >= 0 (0: until converged), got {max_iterations!r}")
    precision = getattr(energy_fn, "precision", None)
    dtype = precision.accumulate if precision is not None else jnp.asarray(positions).dtype
    x = jnp.asarray(np.asarray(positions), dtype)
    if x.ndim != 2 or x.shape[1] != 3:
        raise InputError(f"positions must have shape (n_atoms, 3) [nm], got {x.shape}")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise InputError("positions contain NaN or Inf; fix the coordinates before minimizing")
    n = x.shape[0]
    if box is not None:
        box = jnp.asarray(np.asarray(box), dtype)
    if neighbors is None and hasattr(energy_fn, "neighbor_list"):
        neighbors = energy_fn.neighbor_list(np.asarray(x), None if box is None else np.asarray(box))
    if masses is None:
        masses = np.ones(n)
    masses = np.asarray(masses, np.float64)
    if masses.shape != (n,):
        raise InputError(f"masses must have shape ({n},) [amu], got {masses.shape}")
    frozen = jnp.asarray(masses == 0)
    inv_masses = jnp.asarray(np.where(masses > 0, 1.0 / np.where(masses > 0, masses, 1.0), 0.0), dtype)
    budget = DEFAULT_MAX_ITERATIONS if max_iterations == 0 else int(max_iterations)
    tol = jnp.asarray(tolerance, dtype)
    step = jnp.asarray(max_step, dtype)

    zero = jnp.asarray(0.0, dtype)
    if constraints is None:
        state = _run_stage(method, energy_fn, params, x, box, neighbors, None, zero, frozen, tol, step, budget)
        iterations, ok = int(state.iteration), bool(state.converged)
        evaluations = int(state.evaluations)
        cons = None
    else:
        cons = cast_floats(constraints, dtype)
        work_tol = max(1e-4, float(cons.tolerance))
        x, _ = _project(cons, x, inv_masses, box)
        start = x
        k = 100.0 / work_tol
        prev1 = prev2 = math.inf
        iterations = evaluations = 0
        polish = 2  # stiffer stages allowed after a projection that left the forces above tolerance
        while True:
            state = _run_stage(method, energy_fn, params, x, box, neighbors, cons, jnp.asarray(k, dtype), frozen,
                               tol, step, max(budget - iterations, 1))
            iterations += int(state.iteration)
            evaluations += int(state.evaluations)
            neighbors = state.neighbors
            error = float(_max_distance_error(cons, state.x, box))
            ok = bool(state.converged) and error <= work_tol
            x = state.x
            done = error <= work_tol or error >= prev2 or iterations >= budget
            if done:
                x, _ = _project(cons, x, inv_masses, box)
                # energy and forces at the projected positions, without restraints (no iteration)
                state = _run_stage(method, energy_fn, params, x, box, neighbors, cons, zero, frozen, tol, step, 0)
                evaluations += int(state.evaluations)
                rms = float(_report(state.g, state.x, box, cons, frozen)[0])
                # the projection moves atoms by up to the stage's constraint error, which can push the
                # forces back over the tolerance: minimize again from there with stiffer springs
                if rms <= float(tolerance) or iterations >= budget or polish == 0:
                    ok = ok and rms <= float(tolerance)
                    break
                polish -= 1
                prev1 = prev2 = math.inf
            else:
                prev2, prev1 = prev1, error
            k *= 10.0
            if not done and error > 100 * work_tol:
                x = start  # too far from the constraint surface to come back reliably
    rms, fmax, error = _report(state.g, state.x, box, cons, frozen)
    return MinimizeResult(positions=state.x, energy=state.f, rms_force=rms, max_force=fmax,
                          max_constraint_error=error, neighbors=state.neighbors, iterations=iterations,
                          evaluations=evaluations, converged=ok)
