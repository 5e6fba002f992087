"""The L-BFGS line search (diffmd.md._lbfgs): strong Wolfe steps, the displacement cap, table threading.

An analytic objective over (N, 3) positions (Rosenbrock valleys in x-y, a stiff harmonic z) lets every
accepted step be checked against the strong Wolfe conditions from its end points alone."""

import jax
import jax.numpy as jnp
import numpy as np

from diffmd.md._lbfgs import _C1, _C2, lbfgs_init, lbfgs_iterate


def _energy(x):
    a, b = x[:, 0], x[:, 1]
    return jnp.sum(100.0 * (b - a * a) ** 2 + (1.0 - a) ** 2 + 50.0 * x[:, 2] ** 2)


def _objective(x, calls):
    """(f, g, calls + 1): the "neighbor table" counts evaluations, so threading through it is visible."""
    f, g = jax.value_and_grad(_energy)(x)
    return f, g, calls + 1


@jax.jit
def _step(state, max_step):
    return lbfgs_iterate(_objective, state, max_step)


def _run(x0, max_step, n_iter):
    state = _step(lbfgs_init(jnp.asarray(x0), jnp.asarray(0, jnp.int32)), max_step)  # fresh: evaluates x0
    history = [state]
    for _ in range(n_iter):
        state = _step(state, max_step)
        history.append(state)
    return history


def _start():
    rng = np.random.default_rng(7)
    return np.column_stack([rng.uniform(-1.5, -0.5, 4), rng.uniform(0.5, 1.5, 4), rng.uniform(-1, 1, 4)])


def test_every_step_satisfies_strong_wolfe():
    history = _run(_start(), jnp.asarray(10.0), 150)
    for before, after in zip(history[:-1], history[1:]):
        if float(after.f) == float(before.f):  # converged to round-off: no step
            continue
        s = np.asarray(after.x - before.x)
        gs0, gs1 = float(jnp.vdot(before.g, s)), float(jnp.vdot(after.g, s))
        assert gs0 < 0
        assert float(after.f) <= float(before.f) + _C1 * gs0
        assert abs(gs1) <= _C2 * abs(gs0) * (1 + 1e-9), (after.iteration, gs1, gs0)
    final = history[-1]
    assert float(final.f) < 1e-10 * float(history[0].f)  # the valleys' minimum, f = 0 at x = y = 1
    np.testing.assert_allclose(np.asarray(final.x[:, :2]), 1.0, atol=1e-4)
    # the objective's third value was threaded through every trial of every iteration
    assert int(final.neighbors) == int(final.evaluations)


def test_displacement_cap_bounds_every_trial():
    """With a small cap no atom ever moves more than max_step per iteration, and the search still descends."""
    max_step = 0.05
    history = _run(_start(), jnp.asarray(max_step), 30)
    for before, after in zip(history[:-1], history[1:]):
        moved = np.linalg.norm(np.asarray(after.x - before.x), axis=1)
        assert np.max(moved) <= max_step * (1 + 1e-12)
        assert float(after.f) <= float(before.f)
    assert float(history[-1].f) < 0.1 * float(history[0].f)


def test_non_finite_trials_are_bracketed_away():
    """A step into a region where the energy is NaN (like overlapping atoms) is shortened, not taken."""
    def objective(x, calls):
        f, g = jax.value_and_grad(_energy)(x)
        bad = jnp.any(x[:, 2] < -0.2)  # a wall the quasi-Newton step would cross
        return jnp.where(bad, jnp.nan, f), jnp.where(bad, jnp.nan, g), calls + 1

    x0 = _start()
    x0[:, 2] = 0.1
    state = lbfgs_init(jnp.asarray(x0), jnp.asarray(0, jnp.int32))
    step = jax.jit(lambda s: lbfgs_iterate(objective, s, jnp.asarray(10.0)))
    for _ in range(20):
        state = step(state)
        assert np.isfinite(float(state.f)) and not bool(state.stalled)
    assert float(jnp.min(state.x[:, 2])) >= -0.2
