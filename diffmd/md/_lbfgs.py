"""L-BFGS iterations for ``minimize``: two-loop recursion and a capped strong-Wolfe line search.

Why not ``optax.lbfgs``: raw tleap structures start with forces of 1e5-1e7
kJ/mol/nm, where an unscaled first step flings atoms nanometres away; every
trial step here is capped so that no atom moves more than ``max_step`` [nm].

The line search is the bracketing + zoom search of Nocedal & Wright, *Numerical
Optimization* (2nd ed.), Algorithms 3.5 and 3.6, with safeguarded cubic
interpolation (their eq. 3.59): a step is accepted when it satisfies the strong
Wolfe conditions f(t) <= f(0) + c1 t f'(0) and |f'(t)| <= c2 |f'(0)|, c1 = 1e-4,
c2 = 0.9 (OpenMM's liblbfgs asks for the same conditions, with a cruder
backtracking search). The curvature condition makes every accepted pair have
s.y > 0, so the L-BFGS memory stays a useful model of the curvature; the
Armijo-only backtracking used before accepted steps too short to say anything
about it (the Rosenbrock test in tests/md/test_lbfgs_line_search.py shows such
steps) and needed twice the iterations on rigid water's stiff restraints. The cap
``max_step`` bounds every trial, so it is the search's largest step: reaching
it with sufficient decrease accepts it (as Algorithm 3.5 does at its maximum).
Non-finite energies (overlapping atoms) count as "too far" and are bracketed away.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

_MEMORY = 20  # L-BFGS history (OpenMM's liblbfgs: 6); 20 went deeper on T4L OBC2 at the same stopping test
_MAX_TRIALS = 30  # line-search trials before the best sufficient-decrease point (or nothing) is taken
_C1 = 1e-4  # sufficient decrease (Armijo)
_C2 = 0.9  # strong curvature: |f'(t)| <= c2 |f'(0)| (N&W's value for quasi-Newton directions)
_GROW = 4.0  # bracketing: the next trial is at most this multiple of the last one
_SAFE = 0.1  # zoom: trials keep this fraction of the bracket away from its ends


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


class _Search(NamedTuple):
    """Line-search carry: the bracket [lo, hi] (step t, objective f, slope f' = g.d) and the next trial."""

    t: jax.Array  # next trial step
    t_lo: jax.Array  # best step so far satisfying sufficient decrease (0: none yet)
    f_lo: jax.Array
    dg_lo: jax.Array
    g_lo: jax.Array  # (N, 3) gradient at t_lo
    t_hi: jax.Array  # other end of the bracket (meaningful once zooming)
    f_hi: jax.Array
    dg_hi: jax.Array
    zooming: jax.Array  # bool: a bracket containing a strong-Wolfe step is known
    done: jax.Array  # bool
    trials: jax.Array  # int32 objective evaluations
    neighbors: Any


def _cubic_step(t_a, f_a, dg_a, t_b, f_b, dg_b):
    """Minimizer of the cubic through (t, f, f') at a and b (Nocedal & Wright eq. 3.59); NaN if none.

    Falls back to the quadratic through f_a, dg_a and f_b when the cubic has no minimum."""
    d1 = dg_a + dg_b - 3.0 * (f_a - f_b) / (t_a - t_b)
    disc = d1 * d1 - dg_a * dg_b
    d2 = jnp.sign(t_b - t_a) * jnp.sqrt(jnp.maximum(disc, 0.0))
    cubic = t_b - (t_b - t_a) * (dg_b + d2 - d1) / (dg_b - dg_a + 2.0 * d2)
    dt = t_b - t_a
    curv = f_b - f_a - dg_a * dt
    quad = t_a - dg_a * dt * dt / (2.0 * curv)
    quad = jnp.where(curv > 0, quad, jnp.nan)
    return jnp.where(disc >= 0, cubic, quad)


def _next_zoom_trial(c: _Search):
    """A trial inside the bracket by cubic interpolation, kept a fraction _SAFE away from its ends."""
    width = c.t_hi - c.t_lo
    low = jnp.minimum(c.t_lo + _SAFE * width, c.t_hi - _SAFE * width)
    high = jnp.maximum(c.t_lo + _SAFE * width, c.t_hi - _SAFE * width)
    t = _cubic_step(c.t_lo, c.f_lo, c.dg_lo, c.t_hi, c.f_hi, c.dg_hi)
    # no usable model (non-finite energy at t_hi, overlapping atoms): step back towards t_lo
    t = jnp.where(jnp.isfinite(t) & jnp.isfinite(c.f_hi) & jnp.isfinite(c.dg_hi), t, c.t_lo + _SAFE * width)
    return jnp.clip(t, low, high)


def _line_search(objective, state: LBFGSState, d, gd, t0, t_max):
    """Strong-Wolfe step along d from state.x (N&W Algorithms 3.5 + 3.6), no trial beyond t_max.

    Returns the final carry: t_lo > 0 is a step with sufficient decrease (strong Wolfe unless the
    trials ran out or the bracket shrank to round-off); t_lo == 0 means the search failed. A fresh state only evaluates x (t0 = 0).
    """
    dtype = state.x.dtype
    f0 = state.f

    def cond(c):
        return ~c.done

    def body(c):
        x_t = state.x + c.t * d
        f_t, g_t, nbrs = objective(x_t, c.neighbors)
        f_t = f_t.astype(dtype)
        dg_t = jnp.vdot(g_t, d)
        finite = jnp.isfinite(f_t) & jnp.isfinite(dg_t)
        # too far: no sufficient decrease, or no better than the best point so far
        high = ~finite | (f_t > f0 + _C1 * c.t * gd) | (f_t >= c.f_lo)
        wolfe = ~high & (jnp.abs(dg_t) <= -_C2 * gd)
        # sufficient decrease without the curvature condition: t becomes the new lo end; the old lo
        # end becomes hi when the slope at t points back to it (the minimum lies between them)
        flip = ~high & ~wolfe & (dg_t * jnp.where(c.zooming, c.t_hi - c.t_lo, c.t - c.t_lo) >= 0)
        t_hi = jnp.where(high, c.t, jnp.where(flip, c.t_lo, c.t_hi))
        f_hi = jnp.where(high, f_t, jnp.where(flip, c.f_lo, c.f_hi))
        dg_hi = jnp.where(high, dg_t, jnp.where(flip, c.dg_lo, c.dg_hi))
        zooming = c.zooming | high | flip
        new = c._replace(
            t_lo=jnp.where(~high, c.t, c.t_lo), f_lo=jnp.where(~high, f_t, c.f_lo),
            dg_lo=jnp.where(~high, dg_t, c.dg_lo), g_lo=jnp.where(~high, g_t, c.g_lo),
            t_hi=t_hi, f_hi=f_hi, dg_hi=dg_hi, zooming=zooming, trials=c.trials + 1, neighbors=nbrs)
        # the next trial: interpolate inside the bracket, or (still descending) extrapolate up to the cap
        t_ext = jnp.minimum(_GROW * c.t, t_max)
        t_next = jnp.where(zooming, _next_zoom_trial(new), t_ext).astype(dtype)
        at_cap = ~zooming & ~high & (c.t >= t_max)  # descending at the cap: take it (N&W's alpha_max)
        # a bracket narrower than round-off cannot be split further
        tiny = zooming & (jnp.abs(new.t_hi - new.t_lo) <= 1e3 * jnp.finfo(dtype).eps * jnp.maximum(new.t_hi, new.t_lo))
        done = state.fresh | wolfe | at_cap | tiny | (new.trials >= _MAX_TRIALS)
        accept_fresh = state.fresh
        return new._replace(
            t=t_next, done=done,
            t_lo=jnp.where(accept_fresh, c.t, new.t_lo), f_lo=jnp.where(accept_fresh, f_t, new.f_lo),
            g_lo=jnp.where(accept_fresh, g_t, new.g_lo))

    zero = jnp.zeros((), dtype)
    init = _Search(t=t0, t_lo=zero, f_lo=f0, dg_lo=gd, g_lo=state.g, t_hi=zero, f_hi=f0, dg_hi=gd,
                   zooming=jnp.asarray(False), done=jnp.asarray(False),
                   trials=jnp.asarray(0, jnp.int32), neighbors=state.neighbors)
    return jax.lax.while_loop(cond, body, init)


def lbfgs_iterate(objective, state: LBFGSState, max_step):
    """One L-BFGS iteration: direction, capped strong-Wolfe line search, memory update.

    ``objective(x, neighbors) -> (f, g, neighbors)``; no atom moves more than ``max_step`` [nm] in
    any trial. ``converged`` is left for the caller (it owns the stopping test).
    """
    dtype = state.x.dtype
    d = _direction(state)
    gd = jnp.vdot(state.g, d)
    # not downhill (or no memory): steepest descent
    steepest = (gd >= 0) | (state.n_mem == 0) | ~jnp.isfinite(gd)
    d = jnp.where(steepest, -state.g, d)
    gd = jnp.where(steepest, -jnp.vdot(state.g, state.g), gd)
    biggest = jnp.sqrt(jnp.max(jnp.sum(d * d, axis=1)))
    t_max = (max_step / jnp.maximum(biggest, jnp.finfo(dtype).tiny)).astype(dtype)
    # first trial: the quasi-Newton step 1, or a tenth of the cap for steepest descent (scale unknown)
    t0 = jnp.where(steepest, 0.1 * t_max, jnp.minimum(1.0, t_max)).astype(dtype)
    # a fresh state evaluates x itself (a zero step that is always accepted): the energy function is
    # traced at this one place only, which halves compile time
    t0 = jnp.where(state.fresh, jnp.zeros((), dtype), t0)
    c = _line_search(objective, state, d, gd, t0, t_max)

    ok = state.fresh | (c.t_lo > 0)
    x_new = state.x + c.t_lo * d
    s = x_new - state.x
    y = c.g_lo - state.g
    sy, yy, ss = jnp.vdot(s, y), jnp.vdot(y, y), jnp.vdot(s, s)
    # strong-Wolfe steps have s.y > 0; a step taken without the curvature condition is stored only if so
    store = ~state.fresh & ok & (sy > 1e-10 * jnp.sqrt(ss * yy))
    m = state.s_mem.shape[0]
    slot = state.head % m
    s_mem = state.s_mem.at[slot].set(jnp.where(store, s, state.s_mem[slot]))
    y_mem = state.y_mem.at[slot].set(jnp.where(store, y, state.y_mem[slot]))
    rho_mem = state.rho_mem.at[slot].set(jnp.where(store, 1.0 / jnp.where(store, sy, 1.0), state.rho_mem[slot]))
    head = jnp.where(store, (state.head + 1) % m, state.head)
    # a failed search drops the memory (next try: steepest descent); failing from there ends the run
    n_mem = jnp.where(ok, jnp.where(store, jnp.minimum(state.n_mem + 1, m), state.n_mem), 0)
    x = jnp.where(ok, x_new, state.x)
    f = jnp.where(ok, c.f_lo, state.f)
    g = jnp.where(ok, c.g_lo, state.g)
    stalled = (~ok & steepest) | ~jnp.isfinite(f)
    return LBFGSState(x=x, f=f, g=g, s_mem=s_mem, y_mem=y_mem, rho_mem=rho_mem, head=head.astype(jnp.int32),
                      n_mem=n_mem.astype(jnp.int32),
                      iteration=state.iteration + jnp.where(state.fresh, 0, 1).astype(jnp.int32),
                      converged=state.converged, stalled=stalled, fresh=jnp.asarray(False),
                      evaluations=state.evaluations + c.trials, neighbors=c.neighbors)
