"""L-BFGS iterations for ``minimize``: two-loop recursion and a displacement-capped line search.

Why not ``optax.lbfgs``: raw tleap structures start with forces of 1e5-1e7
kJ/mol/nm, where an unscaled first step flings atoms nanometres away; every
trial step here is capped so that no atom moves more than ``max_step`` [nm].
With plain backtracking (Armijo) a step can have s.y <= 0, which optax's
``scale_by_lbfgs`` would store anyway (its memory then stops producing descent
directions), so the two-loop recursion below skips such pairs and falls back to
steepest descent when a direction is not downhill.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

_MEMORY = 10  # L-BFGS history length (OpenMM's liblbfgs uses 6)
_MAX_TRIALS = 30  # line-search trials before the memory is dropped
_ARMIJO = 1e-4


class LBFGSState(NamedTuple):
    """L-BFGS state (a pytree; shapes fixed by N atoms and the memory M)."""

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


def lbfgs_init(x, neighbors, memory: int = _MEMORY) -> LBFGSState:
    """A state whose first iteration only evaluates the objective at x [nm]."""
    n = x.shape[0]
    zeros = jnp.zeros((memory, n, 3), x.dtype)
    return LBFGSState(x=x, f=jnp.asarray(jnp.inf, x.dtype), g=jnp.zeros_like(x), s_mem=zeros, y_mem=zeros,
                      rho_mem=jnp.zeros((memory,), x.dtype), head=jnp.asarray(0, jnp.int32),
                      n_mem=jnp.asarray(0, jnp.int32), iteration=jnp.asarray(0, jnp.int32),
                      converged=jnp.asarray(False), stalled=jnp.asarray(False), fresh=jnp.asarray(True),
                      evaluations=jnp.asarray(0, jnp.int32), neighbors=neighbors)


def _direction(state: LBFGSState):
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


def lbfgs_iterate(objective, state: LBFGSState, max_step):
    """One L-BFGS iteration: direction, capped backtracking line search, memory update.

    ``objective(x, neighbors) -> (f, g, neighbors)``; no atom moves more than ``max_step`` [nm] on
    the first trial. ``converged`` is left for the caller (it owns the stopping test).
    """
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
    return LBFGSState(x=x, f=f, g=g, s_mem=s_mem, y_mem=y_mem, rho_mem=rho_mem, head=head.astype(jnp.int32),
                  n_mem=n_mem.astype(jnp.int32),
                  iteration=state.iteration + jnp.where(state.fresh, 0, 1).astype(jnp.int32),
                  converged=state.converged, stalled=stalled, fresh=jnp.asarray(False),
                  evaluations=state.evaluations + n_trials, neighbors=nbrs)
