"""Integrators: the same trajectories as OpenMM's reference integrators, pytree state, jit/vmap/grad."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffmd
from diffmd import md as I
from diffmd.kernels.constraint_setup import build_constraints, count_degrees_of_freedom
from diffmd.kernels.constraints import (Constraints, constrain_positions, constraint_deviations,
                                        constraint_velocity_errors)

openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402


# --------------------------------------------------------------------------- shared set-up


@pytest.fixture(scope="module")
def dipeptide():
    """Alanine dipeptide in vacuum: (system, params, energy_fn, force_fn, hbond constraints)."""
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    params, energy_fn = system.energy_fn()
    force_fn = jax.jit(I.make_force_fn(energy_fn, params, None, None))
    top = system.topology
    cons = build_constraints(system.terms.bond_idx, system.params.bond_r0, system.masses, top.elements, "hbonds",
                             tolerance=1e-10, velocity_tolerance=1e-10)
    return system, params, energy_fn, force_fn, cons


def openmm_context(system_omm, integrator, positions, velocities):
    ctx = openmm.Context(system_omm, integrator, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(np.asarray(positions))
    ctx.setVelocities(np.asarray(velocities))
    return ctx


def openmm_state(ctx):
    st = ctx.getState(getPositions=True, getVelocities=True)
    return (np.asarray(st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)),
            np.asarray(st.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)))


def run_steps(integrator, state, force_fn, constraints, n):
    @jax.jit
    def go(state):
        return jax.lax.fori_loop(0, n, lambda _, s: integrator.step(s, force_fn, constraints), state)

    return go(state)


def constrained_start(system, cons, key=0, temperature=300.0):
    x = jnp.asarray(system.positions)
    m = jnp.asarray(system.masses)
    x, ok = constrain_positions(cons, x, x, I.inverse_masses(m))
    assert bool(ok)
    v = I.maxwell_boltzmann(jax.random.PRNGKey(key), m, temperature, positions=x, constraints=cons)
    return x, v, m


# --------------------------------------------------------------------------- same trajectories as OpenMM


def test_velocity_verlet_matches_openmm_verlet(dipeptide):
    system, _, _, force_fn, _ = dipeptide
    x, v, m = constrained_start(system, None)
    dt, n = 0.001, 50
    vv = I.velocity_verlet()
    state = run_steps(vv, vv.init(x, v, m, force_fn, dt=dt), force_fn, None, n)
    omm = app.AmberPrmtopFile(diffmd.data.alanine_dipeptide()[0]).createSystem(removeCMMotion=False)
    # OpenMM's Verlet is a leapfrog: its velocities lag by dt/2
    _, forces = force_fn(x)
    ctx = openmm_context(omm, openmm.VerletIntegrator(dt), x, v - 0.5 * dt * forces / m[:, None])
    ctx.getIntegrator().step(n)
    pos, vel = openmm_state(ctx)
    np.testing.assert_allclose(state.positions, pos, atol=1e-9)
    _, forces = force_fn(state.positions)
    np.testing.assert_allclose(state.velocities - 0.5 * dt * forces / m[:, None], vel, atol=1e-6)
    assert int(state.step) == n and not bool(state.constraint_failed)


def test_langevin_middle_matches_openmm_with_hbond_constraints(dipeptide):
    """Zero friction makes the step deterministic: the splitting and the way constraints enter
    (velocities after the kick, positions after the drifts, the correction folded into v)
    must reproduce OpenMM's LangevinMiddleIntegrator step for step."""
    system, _, _, force_fn, cons = dipeptide
    x, v, m = constrained_start(system, cons)
    dt, n = 0.002, 25
    lm = I.langevin_middle(remove_com_interval=1)
    state = lm.init(x, v, m, force_fn, dt=dt, temperature=300.0, friction=0.0, key=jax.random.PRNGKey(3))
    state = run_steps(lm, state, force_fn, cons, n)
    omm = app.AmberPrmtopFile(diffmd.data.alanine_dipeptide()[0]).createSystem(constraints=app.HBonds)
    integ = openmm.LangevinMiddleIntegrator(300.0, 0.0, dt)
    integ.setConstraintTolerance(1e-10)
    ctx = openmm_context(omm, integ, x, v)
    integ.step(n)
    pos, vel = openmm_state(ctx)
    np.testing.assert_allclose(state.positions, pos, atol=1e-8)
    np.testing.assert_allclose(state.velocities, vel, atol=1e-5)
    assert not bool(state.constraint_failed)


def test_nose_hoover_chain_matches_openmm(dipeptide):
    system, _, _, force_fn, cons = dipeptide
    x, v, m = constrained_start(system, cons)
    dt, n = 0.001, 30
    n_dof = count_degrees_of_freedom(system.n_atoms, cons.n_constraints, remove_com=True)
    nh = I.nose_hoover_chain()
    state = nh.init(x, v, m, force_fn, dt=dt, temperature=250.0, collision_frequency=20.0, n_dof=n_dof)
    state = run_steps(nh, state, force_fn, cons, n)
    omm = app.AmberPrmtopFile(diffmd.data.alanine_dipeptide()[0]).createSystem(constraints=app.HBonds)
    integ = openmm.NoseHooverIntegrator(250.0, 20.0, dt)
    integ.setConstraintTolerance(1e-10)
    ctx = openmm_context(omm, integ, x, v)
    integ.step(n)
    pos, vel = openmm_state(ctx)
    np.testing.assert_allclose(state.positions, pos, atol=1e-8)
    np.testing.assert_allclose(state.velocities, vel, atol=1e-5)
    np.testing.assert_allclose(I.heat_bath_energy(state), integ.computeHeatBathEnergy().value_in_unit(
        unit.kilojoule_per_mole), rtol=1e-6)


# --------------------------------------------------------------------------- state, jit, vmap, padding


def test_state_is_a_named_pytree_and_steps_without_recompiling(dipeptide):
    system, _, _, force_fn, cons = dipeptide
    x, v, m = constrained_start(system, cons)
    lm = I.langevin_middle()
    state = lm.init(x, v, m, force_fn, dt=0.002, temperature=300.0, friction=1.0, key=jax.random.PRNGKey(0))
    names = {f.name for f in dataclasses.fields(state)}
    assert {"positions", "velocities", "forces", "potential_energy", "masses", "dt", "step", "key",
            "constraint_failed", "kT", "friction"} <= names
    leaves = jax.tree_util.tree_leaves(state)
    assert len(leaves) == len(names)
    step = jax.jit(lambda s, c: lm.step(s, force_fn, c))
    s1 = step(state, cons)
    # dt, temperature and friction are traced: new values reuse the compiled step
    s2 = step(dataclasses.replace(s1, dt=s1.dt / 2, kT=s1.kT * 1.1, friction=s1.friction * 2), cons)
    assert step._cache_size() == 1
    assert int(s2.step) == 2
    # forces carried in the state are the forces at the state's positions
    energy, forces = force_fn(s2.positions)
    np.testing.assert_allclose(s2.forces, forces, atol=1e-10)
    np.testing.assert_allclose(s2.potential_energy, energy, rtol=1e-12)


def test_vmap_over_replicas_matches_a_loop(dipeptide):
    system, _, _, force_fn, cons = dipeptide
    x, v, m = constrained_start(system, cons)
    lm = I.langevin_middle()
    temps = jnp.array([280.0, 320.0])
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    init = jax.vmap(lambda t, k: lm.init(x, v, m, force_fn, dt=0.002, temperature=t, friction=1.0, key=k))
    batched = init(temps, keys)

    def run(s):
        return jax.lax.fori_loop(0, 5, lambda _, s: lm.step(s, force_fn, cons), s)

    out = jax.jit(jax.vmap(run))(batched)
    for r in range(2):
        single = lm.init(x, v, m, force_fn, dt=0.002, temperature=temps[r], friction=1.0, key=keys[r])
        single = jax.jit(run)(single)
        np.testing.assert_allclose(out.positions[r], single.positions, atol=1e-12)
        np.testing.assert_allclose(out.velocities[r], single.velocities, atol=1e-10)


def test_padded_atoms_and_constraints_change_nothing():
    x, masses, _, cons = tiny_system()
    x, _ = constrain_positions(cons, x, x, 1 / masses)
    v = I.maxwell_boltzmann(jax.random.PRNGKey(4), masses, 300.0, positions=x, constraints=cons)
    params = tiny_params()
    n = x.shape[0]

    def force_fn(positions):
        e, g = jax.value_and_grad(tiny_energy, argnums=1)(params, positions[:n])
        return e, -jnp.concatenate([g, jnp.zeros((positions.shape[0] - n, 3))])

    # two padding atoms (mass 0), a padded water and padded pairs, some pointing at real atoms
    xp = jnp.concatenate([x, jnp.array([[5.0, 5.0, 5.0], [6.0, 5.0, 5.0]])])
    vp = jnp.concatenate([v, jnp.zeros((2, 3))])
    mp = jnp.concatenate([jnp.asarray(masses), jnp.zeros(2)])
    cons_p = Constraints(
        np.array([[4, 5, 6], [n, n + 1, n]], np.int32), np.array([[0.09572, 0.15136], [0.1, 0.15]]),
        np.array([True, False]), np.concatenate([cons.pairs, [[n, n + 1], [0, 1]]]).astype(np.int32),
        np.concatenate([cons.lengths, [1.0, 0.5]]), np.array([True, True, False, False]),
        cons.tolerance, cons.velocity_tolerance, cons.max_iterations)
    vv = I.velocity_verlet(remove_com_interval=1)
    ref = run_steps(vv, vv.init(x, v, masses, force_fn, dt=0.001), force_fn, cons, 10)
    pad = run_steps(vv, vv.init(xp, vp, mp, force_fn, dt=0.001), force_fn, cons_p, 10)
    np.testing.assert_allclose(pad.positions[:n], ref.positions, atol=1e-12)
    np.testing.assert_allclose(pad.velocities[:n], ref.velocities, atol=1e-10)
    np.testing.assert_allclose(pad.positions[n:], xp[n:], atol=0)
    assert not bool(pad.constraint_failed)
    # velocity Verlet ends each step with RATTLE: velocities tangent to the constraints
    for dev in constraint_deviations(cons_p, pad.positions) + constraint_velocity_errors(
            cons_p, pad.positions, pad.velocities):
        assert np.abs(dev).max() <= 1e-12
    # Langevin draws noise for every atom, but padding atoms get none and stay put
    lm = I.langevin_middle()
    pad = run_steps(lm, lm.init(xp, vp, mp, force_fn, dt=0.001, temperature=300.0, friction=1.0,
                                key=jax.random.PRNGKey(2)), force_fn, cons_p, 10)
    np.testing.assert_allclose(pad.positions[n:], xp[n:], atol=0)
    np.testing.assert_allclose(pad.velocities[n:], 0.0, atol=0)
    assert not bool(pad.constraint_failed)


# --------------------------------------------------------------------------- helpers


def test_maxwell_boltzmann_and_com_removal():
    rng = np.random.default_rng(0)
    n_w = 300
    theta = np.arccos(1 - 0.15136**2 / (2 * 0.09572**2))
    shape = np.array([[0, 0, 0], [0.09572, 0, 0], [0.09572 * np.cos(theta), 0.09572 * np.sin(theta), 0]])
    x = np.concatenate([shape @ np.linalg.qr(rng.normal(size=(3, 3)))[0].T + 3 * rng.random(3)
                        for _ in range(n_w)])
    x = np.concatenate([x, np.zeros((1, 3))])  # one padding atom
    m = np.concatenate([np.tile([15.9994, 1.008, 1.008], n_w), [0.0]])
    cons = Constraints(np.arange(3 * n_w, dtype=np.int32).reshape(n_w, 3), np.tile([0.09572, 0.15136], (n_w, 1)),
                       np.ones(n_w, bool), np.zeros((0, 2), np.int32), np.zeros(0), np.zeros(0, bool))
    v = jax.jit(lambda k: I.maxwell_boltzmann(k, m, 300.0, positions=jnp.asarray(x), constraints=cons))(
        jax.random.PRNGKey(1))
    assert np.all(np.asarray(v[-1]) == 0)
    np.testing.assert_allclose((m[:, None] * v).sum(0), 0.0, atol=1e-10)
    n_dof = count_degrees_of_freedom(n_w * 3, cons.n_constraints, True)
    t = float(I.temperature(v, m, n_dof))
    assert abs(t - 300.0) < 4 * 300.0 * np.sqrt(2.0 / n_dof)
    # rigid waters: only translation and rotation remain (6 dof of 9)
    ke = 0.5 * (m[:-1, None] * np.asarray(v[:-1]) ** 2).reshape(n_w, 9).sum(1)
    assert abs(ke.mean() / (0.5 * 6 * diffmd.units.BOLTZMANN * 300.0) - 1) < 0.15
    # COM removal every N steps, as CMMotionRemover
    v2 = jnp.asarray(rng.normal(size=x.shape)).at[-1].set(0.0)
    out = I.remove_com_velocity(v2, jnp.asarray(m))
    np.testing.assert_allclose((m[:, None] * out).sum(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(out[-1], 0.0)


def test_com_removal_interval(dipeptide):
    system, _, _, force_fn, _ = dipeptide
    x, v, m = constrained_start(system, None)
    push = jnp.array([[10.0, 0.0, 0.0]])  # kJ/mol/nm on every atom: momentum grows by N push dt per step

    def pushed(positions):
        e, f = force_fn(positions)
        return e, f + push

    dt = 0.001
    vv = I.velocity_verlet(remove_com_interval=3)
    state = vv.init(x, v + jnp.array([[1.0, 0.0, 0.0]]), m, pushed, dt=dt)
    step = jax.jit(lambda s: vv.step(s, pushed))
    momenta = []
    for _ in range(4):
        state = step(state)
        momenta.append(float(jnp.sum(m[:, None] * state.velocities, 0)[0]))
    # removed before steps 0 and 3 only, as CMMotionRemover(3)
    dp = system.n_atoms * 10.0 * dt
    np.testing.assert_allclose(momenta, [dp, 2 * dp, 3 * dp, dp], rtol=1e-8)
    with pytest.raises(ValueError):
        I.langevin_middle(remove_com_interval=-1)
    with pytest.raises(ValueError):
        I.nose_hoover_chain(n_yoshida_suzuki=4)


# --------------------------------------------------------------------------- gradients


def tiny_system():
    """Two carbons with a hydrogen each (C-H constrained by SHAKE) and a rigid water (SETTLE)."""
    x = np.array([
        [0.00, 0.00, 0.00], [0.15, 0.02, 0.00], [-0.04, 0.10, 0.00], [0.19, -0.08, 0.03],  # C C H H
        [0.10, 0.30, 0.20], [0.19, 0.31, 0.21], [0.08, 0.39, 0.18],  # water O H H
    ])
    masses = np.array([12.011, 12.011, 1.008, 1.008, 15.9994, 1.008, 1.008])
    bonds = np.array([[0, 1], [0, 2], [1, 3]])
    cons = Constraints(np.array([[4, 5, 6]], np.int32), np.array([[0.09572, 0.15136]]), np.array([True]),
                       np.array([[0, 2], [1, 3]], np.int32), np.array([0.109, 0.109]), np.array([True, True]),
                       tolerance=1e-13, velocity_tolerance=1e-13, max_iterations=500)
    return x, masses, bonds, cons


def tiny_params():
    return {"k": jnp.array([2.0e5, 3.0e5, 2.5e5]), "r0": jnp.array([0.153, 0.109, 0.109]),
            "sigma": jnp.asarray(0.3), "epsilon": jnp.asarray(0.5)}


def tiny_energy(params, positions):
    """Harmonic bonds inside the molecule + Lennard-Jones between the molecule and the water [kJ/mol]."""
    _, _, bonds, _ = tiny_system()
    r = jnp.linalg.norm(positions[bonds[:, 1]] - positions[bonds[:, 0]], axis=1)
    e_bond = 0.5 * jnp.sum(params["k"] * (r - params["r0"]) ** 2)
    d = positions[:4, None, :] - positions[None, 4:, :]
    r2 = jnp.sum(d * d, -1)
    s6 = (params["sigma"] ** 2 / r2) ** 3
    return e_bond + jnp.sum(4 * params["epsilon"] * (s6 * s6 - s6))


def test_gradients_through_constrained_steps_match_finite_differences():
    x, masses, _, cons = tiny_system()
    x, _ = constrain_positions(cons, x, x, 1 / masses)
    v = I.maxwell_boltzmann(jax.random.PRNGKey(4), masses, 300.0, positions=x, constraints=cons)
    params = tiny_params()
    weights = jnp.asarray(np.random.default_rng(1).normal(size=x.shape))
    lm = I.langevin_middle()

    def loss(params, x0):
        def force_fn(positions):
            e, g = jax.value_and_grad(tiny_energy, argnums=1)(params, positions)
            return e, -g

        state = lm.init(x0, v, masses, force_fn, dt=0.001, temperature=300.0, friction=5.0,
                        key=jax.random.PRNGKey(9))
        state = jax.lax.fori_loop(0, 3, lambda _, s: lm.step(s, force_fn, cons), state)
        return jnp.sum(weights * state.positions) + 0.01 * jnp.sum(weights * state.velocities)

    loss = jax.jit(loss)
    g_params, g_x = jax.grad(loss, argnums=(0, 1))(params, x)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves((g_params, g_x)))
    h = 1e-6
    for name, scale in (("epsilon", 1.0), ("sigma", 0.01)):
        up = dict(params, **{name: params[name] + h * scale})
        dn = dict(params, **{name: params[name] - h * scale})
        fd = (loss(up, x) - loss(dn, x)) / (2 * h * scale)
        np.testing.assert_allclose(g_params[name], fd, rtol=1e-5, atol=1e-9)
    direction = jnp.asarray(np.random.default_rng(2).normal(size=x.shape))
    fd = (loss(params, x + h * direction) - loss(params, x - h * direction)) / (2 * h)
    np.testing.assert_allclose(jnp.sum(g_x * direction), fd, rtol=1e-5, atol=1e-9)
