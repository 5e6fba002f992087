"""Local energy minimization: L-BFGS with a displacement-capped backtracking line search.

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
positions (with room for the occupancy it ``needed``) and the chunk is redone,
so no energy ever comes from a table that was too small. ``neighbors`` may also be
a tuple (any pytree) of tables, as a ``sum_potentials`` model takes: every table
is refreshed, the chunk stops when any overflows, and only the tables that
overflowed are re-allocated.

``method="fire"`` runs FIRE instead (see ``_fire_iterate``).

Why not ``optax.lbfgs``: raw tleap structures start with forces of 1e5-1e7
kJ/mol/nm, where an unscaled first step flings atoms nanometres away; every
trial step here is capped so that no atom moves more than ``max_step`` [nm].
With plain backtracking (Armijo) a step can have s.y <= 0, which optax's
``scale_by_lbfgs`` would store anyway (its memory then stops producing descent
directions), so the two-loop recursion below skips such pairs and falls back to
steepest descent when a direction is not downhill.

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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._runner import any_overflow, is_table, neighbor_tables
from .kernels.constraints import Constraints, constrain_positions, constrain_velocities, constraint_deviations
from .kernels.errors import InputError, SimulationError
from .kernels.neighbors import Neighbors, allocate_neighbors, update_neighbors
from .kernels.precision import cast_floats

__all__ = ["MinimizeResult", "minimize"]

METHODS = ("lbfgs", "fire")
#: iteration cap used when ``max_iterations=0`` ("until converged")
DEFAULT_MAX_ITERATIONS = 20_000
_CHUNK = 200  # iterations per jitted chunk (traced bound: changing it does not recompile)
_MEMORY = 10  # L-BFGS history length (OpenMM's liblbfgs uses 6)
_MAX_TRIALS = 30  # line-search trials before the memory is dropped
_ARMIJO = 1e-4
_MAX_REALLOCATIONS = 6


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


class _State(NamedTuple):
    x: jax.Array  # (N, 3) positions
    f: jax.Array  # objective (energy + restraints)
    g: jax.Array  # (N, 3) gradient of the objective
    s_mem: jax.Array  # (M, N, 3) position steps
    y_mem: jax.Array  # (M, N, 3) gradient changes
    rho_mem: jax.Array  # (M,) 1 / (s . y)
    head: jax.Array  # int32 slot of the next pair
    n_mem: jax.Array  # int32 pairs stored
    iteration: jax.Array  # int32
    converged: jax.Array  # bool
    stalled: jax.Array  # bool: line search failed from steepest descent
    fresh: jax.Array  # bool: f and g are not yet known (the next iteration only evaluates them)
    evaluations: jax.Array  # int32 energy evaluations so far
    neighbors: Any


# ---------------------------------------------------------------------------------------------
# The objective and one L-BFGS iteration (traced)
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
    if isinstance(neighbors, Neighbors):
        neighbors = update_neighbors(neighbors, x, box)
    elif neighbors is not None:
        neighbors = jax.tree_util.tree_map(lambda t: update_neighbors(t, x, box), neighbors, is_leaf=is_table)

    def total(x):
        e = energy_fn(params, x, box, neighbors)
        return e + _restraint(constraints, x, box, k).astype(e.dtype)

    f, g = jax.value_and_grad(total)(x)
    # massless atoms (virtual sites, padding) stay put, as in OpenMM
    g = jnp.where(frozen[:, None], jnp.zeros_like(g), g)
    return f, g, neighbors


def _rms(g):
    return jnp.sqrt(jnp.sum(g * g) / g.shape[0])


def _direction(state: _State):
    """-H g by the two-loop recursion over the stored pairs (newest first)."""
    m = state.s_mem.shape[0]
    q = state.g

    def back(k, carry):
        q, alphas = carry
        idx = (state.head - 1 - k) % m
        use = k < state.n_mem
        alpha = jnp.where(use, state.rho_mem[idx] * jnp.vdot(state.s_mem[idx], q), 0.0)
        return q - alpha * state.y_mem[idx], alphas.at[k].set(alpha)

    q, alphas = jax.lax.fori_loop(0, m, back, (q, jnp.zeros((m,), q.dtype)))
    newest = (state.head - 1) % m
    s_new, y_new = state.s_mem[newest], state.y_mem[newest]
    gamma = jnp.vdot(s_new, y_new) / jnp.maximum(jnp.vdot(y_new, y_new), jnp.finfo(q.dtype).tiny)
    r = q * jnp.where(state.n_mem > 0, gamma, 1.0)

    def forward(j, r):
        k = m - 1 - j
        idx = (state.head - 1 - k) % m
        use = k < state.n_mem
        beta = state.rho_mem[idx] * jnp.vdot(state.y_mem[idx], r)
        return r + jnp.where(use, alphas[k] - beta, 0.0) * state.s_mem[idx]

    r = jax.lax.fori_loop(0, m, forward, r)
    return -r


def _iterate(objective, state: _State, tolerance, max_step):
    """One L-BFGS iteration: direction, capped backtracking line search, memory update."""
    dtype = state.x.dtype
    d = _direction(state)
    gd = jnp.vdot(state.g, d)
    # not downhill (or no memory): steepest descent
    steepest = (gd >= 0) | (state.n_mem == 0) | ~jnp.isfinite(gd)
    d = jnp.where(steepest, -state.g, d)
    gd = jnp.where(steepest, -jnp.vdot(state.g, state.g), gd)
    biggest = jnp.sqrt(jnp.max(jnp.sum(d * d, axis=1)))
    # first trial moves no atom more than max_step (a tenth of it for steepest descent, whose scale is unknown)
    cap = jnp.where(steepest, 0.1 * max_step, max_step)
    t_cap = cap / jnp.maximum(biggest, jnp.finfo(dtype).tiny)
    t0 = jnp.where(steepest, t_cap, jnp.minimum(1.0, t_cap)).astype(dtype)
    # a fresh state evaluates x itself (a zero step that is always accepted): the energy function is
    # traced at this one place only, which halves compile time
    t0 = jnp.where(state.fresh, jnp.zeros((), dtype), t0)

    def trial_cond(c):
        return ~c[4] & (c[5] < _MAX_TRIALS)

    def trial(c):
        t, _, _, _, _, n, nbrs = c
        x_new = state.x + t * d
        f_new, g_new, nbrs = objective(x_new, nbrs)
        ok = state.fresh | (jnp.isfinite(f_new) & (f_new <= state.f + _ARMIJO * t * gd))
        # quadratic interpolation of the energy along d, kept within [0.1 t, 0.5 t]
        denom = 2.0 * (f_new - state.f - gd * t)
        t_quad = jnp.where(denom > 0, -gd * t * t / jnp.where(denom > 0, denom, 1.0), 0.5 * t)
        t_next = jnp.where(jnp.isfinite(f_new), jnp.clip(t_quad, 0.1 * t, 0.5 * t), 0.1 * t).astype(dtype)
        return (jnp.where(ok, t, t_next), x_new, f_new.astype(state.f.dtype), g_new, ok, n + 1, nbrs)

    init = (t0, state.x, state.f, state.g, jnp.asarray(False), jnp.asarray(0, jnp.int32), state.neighbors)
    _, x_new, f_new, g_new, ok, n_trials, nbrs = jax.lax.while_loop(trial_cond, trial, init)

    s = x_new - state.x
    y = g_new - state.g
    sy, yy, ss = jnp.vdot(s, y), jnp.vdot(y, y), jnp.vdot(s, s)
    store = ok & (sy > 1e-10 * jnp.sqrt(ss * yy))
    m = state.s_mem.shape[0]
    slot = state.head % m
    s_mem = state.s_mem.at[slot].set(jnp.where(store, s, state.s_mem[slot]))
    y_mem = state.y_mem.at[slot].set(jnp.where(store, y, state.y_mem[slot]))
    rho_mem = state.rho_mem.at[slot].set(jnp.where(store, 1.0 / jnp.where(store, sy, 1.0), state.rho_mem[slot]))
    head = jnp.where(store, (state.head + 1) % m, state.head)
    # a failed search drops the memory (next try: steepest descent); failing from there ends the run
    n_mem = jnp.where(ok, jnp.where(store, jnp.minimum(state.n_mem + 1, m), state.n_mem), 0)
    x = jnp.where(ok, x_new, state.x)
    f = jnp.where(ok, f_new, state.f)
    g = jnp.where(ok, g_new, state.g)
    stalled = (~ok & steepest) | ~jnp.isfinite(f)
    return _State(x=x, f=f, g=g, s_mem=s_mem, y_mem=y_mem, rho_mem=rho_mem, head=head.astype(jnp.int32),
                  n_mem=n_mem.astype(jnp.int32),
                  iteration=state.iteration + jnp.where(state.fresh, 0, 1).astype(jnp.int32),
                  converged=_rms(g) <= tolerance, stalled=stalled, fresh=jnp.asarray(False),
                  evaluations=state.evaluations + n_trials, neighbors=nbrs)


# FIRE (Bitzek et al., PRL 97, 170201 (2006)) with the FIRE 2.0 refinements of Guenole et al.,
# Comput. Mater. Sci. 175, 109584 (2020): semi-implicit Euler, a delay before dt grows, and a half
# step back when the power turns negative. Unit masses: the path does not depend on atomic masses.
_FIRE_DT = 0.002  # [ps] with unit masses: dx = dt^2 F, 4e-3 nm for F = 1,000 kJ/mol/nm
_FIRE_DT_MAX = 0.02
_FIRE_DT_MIN = 0.00004
_FIRE_DELAY = 20
_FIRE_ALPHA = 0.25


class _FireState(NamedTuple):
    x: jax.Array
    f: jax.Array
    g: jax.Array
    v: jax.Array  # (N, 3) velocities of the fictitious dynamics
    dt: jax.Array
    alpha: jax.Array  # mixing of velocities towards the force direction
    n_pos: jax.Array  # int32 steps since the power was last negative
    iteration: jax.Array
    converged: jax.Array
    stalled: jax.Array
    fresh: jax.Array
    evaluations: jax.Array
    neighbors: Any


def _fire_iterate(objective, state: _FireState, tolerance, max_step):
    """One FIRE step (positions from the current forces), then forces at the new positions."""
    dtype = state.x.dtype
    force = -state.g
    power = jnp.vdot(force, state.v)
    downhill = power > 0
    n_pos = jnp.where(downhill, state.n_pos + 1, 0)
    grow = downhill & (n_pos > _FIRE_DELAY)
    dt = jnp.where(grow, jnp.minimum(state.dt * 1.1, _FIRE_DT_MAX),
                   jnp.where(downhill, state.dt, jnp.maximum(state.dt * 0.5, _FIRE_DT_MIN))).astype(dtype)
    alpha = jnp.where(grow, state.alpha * 0.99, jnp.where(downhill, state.alpha, _FIRE_ALPHA)).astype(dtype)
    # uphill: step half back and stop
    x = jnp.where(downhill, state.x, state.x - 0.5 * dt * state.v)
    v = jnp.where(downhill, state.v, jnp.zeros_like(state.v)) + dt * force
    f_norm = jnp.sqrt(jnp.vdot(force, force))
    v_norm = jnp.sqrt(jnp.vdot(v, v))
    v = (1 - alpha) * v + alpha * v_norm * force / jnp.maximum(f_norm, jnp.finfo(dtype).tiny)
    biggest = dt * jnp.sqrt(jnp.max(jnp.sum(v * v, axis=1)))
    # cap the step, and the velocity with it (a huge velocity would also make the half step back huge)
    v = v * jnp.minimum(1.0, max_step / jnp.maximum(biggest, jnp.finfo(dtype).tiny)).astype(dtype)
    dx = dt * v
    x_new = jnp.where(state.fresh, state.x, x + dx)
    f_new, g_new, nbrs = objective(x_new, state.neighbors)
    # a step into a non-finite energy is undone, with a smaller dt and the dynamics stopped
    ok = jnp.isfinite(f_new) | state.fresh
    keep = state._replace(v=jnp.zeros_like(v), dt=jnp.maximum(dt * 0.5, _FIRE_DT_MIN).astype(dtype),
                          alpha=jnp.asarray(_FIRE_ALPHA, dtype), n_pos=jnp.asarray(0, jnp.int32))
    fresh_or = functools.partial(jnp.where, state.fresh)
    new = _FireState(x=x_new, f=f_new.astype(state.f.dtype), g=g_new, v=fresh_or(state.v, v),
                     dt=fresh_or(state.dt, dt), alpha=fresh_or(state.alpha, alpha),
                     n_pos=fresh_or(state.n_pos, n_pos).astype(jnp.int32), iteration=state.iteration,
                     converged=state.converged, stalled=state.stalled, fresh=state.fresh,
                     evaluations=state.evaluations, neighbors=nbrs)
    out = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, keep._replace(neighbors=nbrs))
    stalled = ~jnp.isfinite(out.f) | (~ok & (state.dt <= _FIRE_DT_MIN))
    return out._replace(iteration=state.iteration + jnp.where(state.fresh, 0, 1).astype(jnp.int32),
                        converged=_rms(out.g) <= tolerance, stalled=stalled, fresh=jnp.asarray(False),
                        evaluations=state.evaluations + 1)


# ---------------------------------------------------------------------------------------------
# Jitted entry points
# ---------------------------------------------------------------------------------------------


def _fresh_state(method: str, x, neighbors, memory: int = _MEMORY):
    """A state whose first iteration only evaluates the objective at x."""
    n = x.shape[0]
    if method == "fire":
        return _FireState(x=x, f=jnp.asarray(jnp.inf, x.dtype), g=jnp.zeros_like(x), v=jnp.zeros_like(x),
                          dt=jnp.asarray(_FIRE_DT, x.dtype), alpha=jnp.asarray(_FIRE_ALPHA, x.dtype),
                          n_pos=jnp.asarray(0, jnp.int32), iteration=jnp.asarray(0, jnp.int32),
                          converged=jnp.asarray(False), stalled=jnp.asarray(False), fresh=jnp.asarray(True),
                          evaluations=jnp.asarray(0, jnp.int32), neighbors=neighbors)
    zeros = jnp.zeros((memory, n, 3), x.dtype)
    return _State(x=x, f=jnp.asarray(jnp.inf, x.dtype), g=jnp.zeros_like(x), s_mem=zeros, y_mem=zeros,
                  rho_mem=jnp.zeros((memory,), x.dtype), head=jnp.asarray(0, jnp.int32),
                  n_mem=jnp.asarray(0, jnp.int32), iteration=jnp.asarray(0, jnp.int32), converged=jnp.asarray(False),
                  stalled=jnp.asarray(False), fresh=jnp.asarray(True),
                  evaluations=jnp.asarray(0, jnp.int32), neighbors=neighbors)


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

    iterate = _fire_iterate if isinstance(state, _FireState) else _iterate
    return jax.lax.while_loop(cond, lambda s: iterate(objective, s, tolerance, max_step), state)


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


def _reallocate_table(x, box, old: Neighbors, margin: float) -> Neighbors:
    """A fresh table at x laid out as ``old`` (same exclusions, cutoff and skin), with room for what it needed."""
    args = (np.asarray(x), None if box is None else np.asarray(box), np.asarray(old.exclusions), old.cutoff, old.skin)
    fresh = allocate_neighbors(*args, margin=margin)
    want = int(math.ceil(int(old.needed) * margin))
    if fresh.capacity < want:
        fresh = allocate_neighbors(*args, margin=margin, capacity=min(want, x.shape[0] - 1))
    return fresh


def _reallocate(energy_fn, x, box, old, margin: float, start=None):
    """A fresh table at x with room for what ``old`` needed (host).

    With a pytree of tables, each table of ``old`` that overflowed is re-allocated
    from its own layout and the others are taken from ``start`` (tables valid at
    x; default ``old``).
    """
    if not isinstance(old, Neighbors):
        start = old if start is None else start
        neighbor_tables(old)
        return jax.tree_util.tree_map(lambda s, o: _reallocate_table(x, box, o, margin) if bool(o.overflow) else s,
                                      start, old, is_leaf=is_table)
    if not hasattr(energy_fn, "neighbor_list"):
        raise SimulationError(
            "the neighbor table overflowed during minimization and energy_fn has no neighbor_list(positions, box) "
            "to re-allocate it; pass a table with more capacity")
    fresh = energy_fn.neighbor_list(np.asarray(x), None if box is None else np.asarray(box), margin=margin)
    want = int(math.ceil(int(old.needed) * margin))
    if fresh.capacity < want:
        fresh = energy_fn.neighbor_list(np.asarray(x), None if box is None else np.asarray(box), margin=margin,
                                        capacity=min(want, x.shape[0] - 1))
    return fresh


def _run_stage(method, energy_fn, params, x, box, neighbors, constraints, k, frozen, tolerance, max_step, budget):
    """Minimize energy + restraint(k) from x for at most ``budget`` iterations (host loop over chunks).

    ``budget=0`` only evaluates the objective at x.
    """
    margin = 1.25
    for _ in range(_MAX_REALLOCATIONS):
        if not any_overflow(neighbors):
            break
        neighbors = _reallocate(energy_fn, x, box, neighbors, margin)
        margin *= 1.5
    state = _fresh_state(method, x, neighbors)
    reallocations = 0
    while bool(state.fresh) or (int(state.iteration) < budget and not bool(state.converged)
                                and not bool(state.stalled)):
        stop_at = jnp.asarray(min(int(state.iteration) + _CHUNK, budget), jnp.int32)
        new = _chunk(energy_fn, params, state, box, constraints, k, frozen, tolerance, max_step, stop_at)
        if any_overflow(new.neighbors):
            # the chunk saw a table too small: its energies are not trusted; redo it with a bigger one
            reallocations += 1
            if reallocations > _MAX_REALLOCATIONS:
                raise SimulationError(f"neighbor table kept overflowing during minimization "
                                      f"(needed {_needed(new.neighbors)} partners per atom)")
            state = state._replace(neighbors=_reallocate(energy_fn, state.x, box, new.neighbors, margin,
                                                         start=state.neighbors))
            margin *= 1.5
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
        while True:
            state = _run_stage(method, energy_fn, params, x, box, neighbors, cons, jnp.asarray(k, dtype), frozen,
                               tol, step, max(budget - iterations, 1))
            iterations += int(state.iteration)
            evaluations += int(state.evaluations)
            neighbors = state.neighbors
            error = float(_max_distance_error(cons, state.x, box))
            ok = bool(state.converged) and error <= work_tol
            x = state.x
            if error <= work_tol or error >= prev2 or iterations >= budget:
                break
            prev2, prev1 = prev1, error
            k *= 10.0
            if error > 100 * work_tol:
                x = start  # too far from the constraint surface to come back reliably
        x, _ = _project(cons, x, inv_masses, box)
        # energy and forces at the projected positions, without restraints (no iteration)
        state = _run_stage(method, energy_fn, params, x, box, neighbors, cons, zero, frozen, tol, step, 0)
        evaluations += int(state.evaluations)
    rms, fmax, error = _report(state.g, state.x, box, cons, frozen)
    return MinimizeResult(positions=state.x, energy=state.f, rms_force=rms, max_force=fmax,
                          max_constraint_error=error, neighbors=state.neighbors, iterations=iterations,
                          evaluations=evaluations, converged=ok)
