"""FIRE iterations for ``minimize`` (``method="fire"``).

FIRE (Bitzek et al., PRL 97, 170201 (2006)) with the FIRE 2.0 refinements of Guenole et al.,
Comput. Mater. Sci. 175, 109584 (2020): semi-implicit Euler, a delay before dt grows, and a half
step back when the power turns negative. Unit masses: the path does not depend on atomic masses.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

_FIRE_DT = 0.002  # [ps] with unit masses: dx = dt^2 F, 4e-3 nm for F = 1,000 kJ/mol/nm
_FIRE_DT_MAX = 0.02
_FIRE_DT_MIN = 0.00004
_FIRE_DELAY = 20
_FIRE_ALPHA = 0.25


class FireState(NamedTuple):
    """FIRE state (a pytree): positions, objective, gradient and the fictitious dynamics."""

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


def fire_init(x, neighbors) -> FireState:
    """A state whose first iteration only evaluates the objective at x [nm]."""
    return FireState(x=x, f=jnp.asarray(jnp.inf, x.dtype), g=jnp.zeros_like(x), v=jnp.zeros_like(x),
                     dt=jnp.asarray(_FIRE_DT, x.dtype), alpha=jnp.asarray(_FIRE_ALPHA, x.dtype),
                     n_pos=jnp.asarray(0, jnp.int32), iteration=jnp.asarray(0, jnp.int32),
                     converged=jnp.asarray(False), stalled=jnp.asarray(False), fresh=jnp.asarray(True),
                     evaluations=jnp.asarray(0, jnp.int32), neighbors=neighbors)


def fire_iterate(objective, state: FireState, max_step):
    """One FIRE step (positions from the current forces), then forces at the new positions.

    ``objective(x, neighbors) -> (f, g, neighbors)``; no atom moves more than ``max_step`` [nm].
    ``converged`` is left for the caller (it owns the stopping test).
    """
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
    new = FireState(x=x_new, f=f_new.astype(state.f.dtype), g=g_new, v=fresh_or(state.v, v),
                     dt=fresh_or(state.dt, dt), alpha=fresh_or(state.alpha, alpha),
                     n_pos=fresh_or(state.n_pos, n_pos).astype(jnp.int32), iteration=state.iteration,
                     converged=state.converged, stalled=state.stalled, fresh=state.fresh,
                     evaluations=state.evaluations, neighbors=nbrs)
    out = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, keep._replace(neighbors=nbrs))
    stalled = ~jnp.isfinite(out.f) | (~ok & (state.dt <= _FIRE_DT_MIN))
    return out._replace(iteration=state.iteration + jnp.where(state.fresh, 0, 1).astype(jnp.int32),
                        stalled=stalled, fresh=jnp.asarray(False),
                        evaluations=state.evaluations + 1)
