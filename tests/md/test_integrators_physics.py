"""Physical checks of the integrators: rigid-water box at 2 fs, NVE drift vs OpenMM, thermostat statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffmd
from diffmd import md as I
from diffmd.kernels.constants import BOLTZMANN
from diffmd.kernels.constraint_setup import build_constraints, count_degrees_of_freedom
from diffmd.kernels.constraints import (constrain_positions, constrain_velocities, constraint_deviations,
                                        constraint_velocity_errors)

openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402

# The bundled watbox216.crd box line carries odd angles that both OpenMM and diffmd read as a
# triclinic cell whose smallest width (0.98 nm) puts waters on top of each other's images;
# its 216 waters fill the cube of edge 1.8774349 nm (the crd's length), which is used here.
WATER_BOX = np.eye(3) * 1.8774349
WATER_CUTOFF = 0.8


@pytest.fixture(scope="module")
def water():
    system = diffmd.load_amber(*diffmd.data.water_box())
    system = system.with_positions(system.positions, box=WATER_BOX)
    params, energy_fn = system.energy_fn("cutoff", cutoff=WATER_CUTOFF)
    top = system.topology
    cons = build_constraints(system.terms.bond_idx, system.params.bond_r0, system.masses, top.elements, "hbonds",
                             rigid_water=True, residue_index=top.residue_index, residue_names=top.residue_names)
    box = jnp.asarray(WATER_BOX)
    nbrs = energy_fn.neighbor_list(system.positions, WATER_BOX)
    return system, params, energy_fn, cons, box, nbrs


def water_run(integrator, state, water, n):
    """n steps with a neighbor table kept current, as the runner does; per-step observables."""
    system, params, energy_fn, cons, box, nbrs = water
    n_dof = count_degrees_of_freedom(system.n_atoms, cons.n_constraints, True)

    @jax.jit
    def go(state, nbrs):
        def body(carry, _):
            st, nb = carry
            st = integrator.step(st, I.make_force_fn(energy_fn, params, box, nb), cons, box)
            nb = diffmd.update_neighbors(nb, st.positions, box)
            dev = jnp.max(jnp.abs(constraint_deviations(cons, st.positions, box)[0]))
            vdev = jnp.max(constraint_velocity_errors(cons, st.positions, st.velocities, box)[0])
            return (st, nb), (I.temperature(st.velocities, st.masses, n_dof), dev, vdev)

        return jax.lax.scan(body, (state, nbrs), None, length=n)

    (state, nbrs), obs = go(state, nbrs)
    assert not bool(nbrs.overflow)
    return state, [np.asarray(o) for o in obs]


def water_start(water, temperature=300.0, key=0):
    system, params, energy_fn, cons, box, nbrs = water
    x = jnp.asarray(system.positions)
    m = jnp.asarray(system.masses)
    x, ok = constrain_positions(cons, x, x, I.inverse_masses(m), box)
    assert bool(ok)
    v = I.maxwell_boltzmann(jax.random.PRNGKey(key), m, temperature, positions=x, constraints=cons, box=box)
    return x, v, m, I.make_force_fn(energy_fn, params, box, nbrs)


def test_rigid_water_box_at_2fs_stays_near_300K(water):
    """A wrong SETTLE rotation (as in a known JAX implementation) heats such a box to ~1e5 K in
    one 2 fs step; here the first step, and the next 100, stay near the bath temperature."""
    system, *_ = water
    x, v, m, force_fn = water_start(water)
    lm = I.langevin_middle()
    state = lm.init(x, v, m, force_fn, dt=0.002, temperature=300.0, friction=1.0, key=jax.random.PRNGKey(1))
    state, (temps, dev, _) = water_run(lm, state, water, 100)
    assert 250.0 < temps[0] < 350.0
    assert abs(temps[30:].mean() - 300.0) < 25.0
    assert dev.max() < 1e-10  # SETTLE is exact: every step, to rounding
    # (Langevin-middle velocities are mid-step ones, tangent to the constraints at the midpoint,
    # as OpenMM's: they are not checked against the end-of-step positions.)
    assert not bool(state.constraint_failed)


def test_settle_dynamics_match_openmm_water_box(water):
    """Zero friction: step for step the same rigid-water trajectory as OpenMM's SETTLE."""
    system, *_ = water
    x, v, m, force_fn = water_start(water, key=3)
    lm = I.langevin_middle()
    state = lm.init(x, v, m, force_fn, dt=0.002, temperature=300.0, friction=0.0, key=jax.random.PRNGKey(1))
    state, _ = water_run(lm, state, water, 5)
    omm = app.AmberPrmtopFile(diffmd.data.water_box()[0]).createSystem(
        nonbondedMethod=app.CutoffPeriodic, nonbondedCutoff=WATER_CUTOFF * unit.nanometer, rigidWater=True)
    omm.setDefaultPeriodicBoxVectors(*WATER_BOX)
    integ = openmm.LangevinMiddleIntegrator(300.0, 0.0, 0.002)
    integ.setConstraintTolerance(1e-10)
    ctx = openmm.Context(omm, integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(np.asarray(x))
    ctx.setVelocities(np.asarray(v))
    integ.step(5)
    st = ctx.getState(getPositions=True, getVelocities=True)
    np.testing.assert_allclose(state.positions, st.getPositions(asNumpy=True).value_in_unit(unit.nanometer),
                               atol=1e-8)
    np.testing.assert_allclose(state.velocities, st.getVelocities(asNumpy=True).value_in_unit(
        unit.nanometer / unit.picosecond), atol=1e-5)


# --------------------------------------------------------------------------- alanine dipeptide


@pytest.fixture(scope="module")
def dipeptide():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    params, energy_fn = system.energy_fn()
    force_fn = I.make_force_fn(energy_fn, params, None, None)
    top = system.topology
    cons = build_constraints(system.terms.bond_idx, system.params.bond_r0, system.masses, top.elements, "hbonds")
    return system, force_fn, cons


def sampled(integrator, state, force_fn, cons, n_outer, n_inner, observe):
    @jax.jit
    def go(state):
        def outer(st, _):
            st = jax.lax.fori_loop(0, n_inner, lambda _, s: integrator.step(s, force_fn, cons), st)
            return st, observe(st)

        return jax.lax.scan(outer, state, None, length=n_outer)

    state, obs = go(state)
    return state, np.asarray(obs)


def block_error(x, n_blocks=20):
    blocks = x[: len(x) // n_blocks * n_blocks].reshape(n_blocks, -1).mean(1)
    return blocks.std(ddof=1) / np.sqrt(n_blocks)


def test_nose_hoover_conserves_its_extended_energy(dipeptide):
    system, force_fn, cons = dipeptide
    x = jnp.asarray(system.positions)
    m = jnp.asarray(system.masses)
    x, _ = constrain_positions(cons, x, x, I.inverse_masses(m))
    v = I.maxwell_boltzmann(jax.random.PRNGKey(0), m, 300.0, positions=x, constraints=cons)
    n_dof = count_degrees_of_freedom(system.n_atoms, cons.n_constraints, True)
    nh = I.nose_hoover_chain()
    state = nh.init(x, v, m, force_fn, dt=0.001, temperature=300.0, collision_frequency=10.0, n_dof=n_dof)

    def observe(st):
        # the stored velocities are mid-step ones (as OpenMM's for this scheme); the conserved
        # quantity needs them at the positions' time: half a kick forward, then RATTLE
        v_sync = st.velocities + 0.5 * st.dt * st.forces / st.masses[:, None]
        v_sync, _ = constrain_velocities(cons, st.positions, v_sync, I.inverse_masses(st.masses))
        ke = I.kinetic_energy(v_sync, st.masses)
        return jnp.stack([st.potential_energy + ke + I.heat_bath_energy(st), ke])

    state, obs = sampled(nh, state, force_fn, cons, 100, 10, observe)
    conserved, ke = obs[:, 0], obs[:, 1]
    # the extended energy moves far less than the kinetic energy exchanged with the bath
    assert np.std(conserved) < 0.02 * np.std(ke)
    assert not bool(state.constraint_failed)


@pytest.mark.slow
def test_nve_energy_drift_matches_openmm_verlet(dipeptide):
    """Velocity Verlet, 1 fs, double precision, 50 ps: drift and fluctuation of the total energy
    no worse than twice OpenMM's VerletIntegrator on the same system from the same state."""
    system, force_fn, _ = dipeptide
    dt, n_outer, n_inner = 0.001, 5000, 10
    x = jnp.asarray(system.positions)
    m = jnp.asarray(system.masses)
    v = I.maxwell_boltzmann(jax.random.PRNGKey(0), m, 300.0, positions=x)
    vv = I.velocity_verlet()
    state = vv.init(x, v, m, force_fn, dt=dt)
    _, ours = sampled(vv, state, force_fn, None, n_outer, n_inner,
                      lambda st: st.potential_energy + I.kinetic_energy(st.velocities, st.masses))
    omm = app.AmberPrmtopFile(diffmd.data.alanine_dipeptide()[0]).createSystem(removeCMMotion=False)
    integ = openmm.VerletIntegrator(dt)
    ctx = openmm.Context(omm, integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(np.asarray(x))
    ctx.setVelocities(np.asarray(v - 0.5 * dt * force_fn(x)[1] / m[:, None]))  # leapfrog: v(-dt/2)
    theirs = []
    for _ in range(n_outer):
        integ.step(n_inner)
        st = ctx.getState(getEnergy=True)
        theirs.append((st.getPotentialEnergy() + st.getKineticEnergy()).value_in_unit(unit.kilojoule_per_mole))
    theirs = np.array(theirs)
    time = np.arange(1, n_outer + 1) * dt * n_inner

    def drift(e):  # kJ/mol over the run, from a straight-line fit, and its statistical error
        slope = np.polyfit(time, e, 1)[0]
        resid = e - np.polyval(np.polyfit(time, e, 1), time)
        return abs(slope) * time[-1], 3 * block_error(resid) * np.sqrt(12.0)

    # false failures: the runs are deterministic (fixed velocities, double precision); a correct
    # integrator fails only if its fitted drift exceeds twice a 3-standard-error noise floor,
    # 6 standard errors: P < 1e-8
    d_ours, noise_ours = drift(ours)
    d_theirs, noise_theirs = drift(theirs)
    assert d_ours <= 2 * max(d_theirs, noise_ours, noise_theirs), (d_ours, d_theirs, noise_ours)
    fluct = lambda e: np.sqrt(np.mean((e - e.mean()) ** 2))  # noqa: E731
    assert fluct(ours) <= 2 * fluct(theirs)


@pytest.mark.slow
def test_langevin_temperature_and_kinetic_energy_distribution(dipeptide):
    """LangevinMiddle with H-bond constraints at 2 fs, 200 ps: the mean temperature agrees with
    the bath within 4.5 standard errors, and the kinetic energy follows the Gamma distribution
    of the constrained degrees of freedom (3N - Nc - 3).

    False failures per run (20 blocks of 9.5 ps, independent: Student t with 19 dof): mean
    P(|t| > 4.5) = 2.5e-4, variance 2.5e-4, KS (p > 1e-4 on samples 1 ps apart) 1e-4; in all
    6e-4."""
    from scipy import stats

    system, force_fn, cons = dipeptide
    x = jnp.asarray(system.positions)
    m = jnp.asarray(system.masses)
    x, _ = constrain_positions(cons, x, x, I.inverse_masses(m))
    v = I.maxwell_boltzmann(jax.random.PRNGKey(0), m, 300.0, positions=x, constraints=cons)
    n_dof = count_degrees_of_freedom(system.n_atoms, cons.n_constraints, True)
    lm = I.langevin_middle()
    state = lm.init(x, v, m, force_fn, dt=0.002, temperature=300.0, friction=1.0, key=jax.random.PRNGKey(1))
    state, ke = sampled(lm, state, force_fn, cons, 20000, 5, lambda st: I.kinetic_energy(st.velocities, st.masses))
    assert not bool(state.constraint_failed)
    ke = ke[1000:]
    kT = BOLTZMANN * 300.0
    temps = 2 * ke / (n_dof * BOLTZMANN)
    assert abs(temps.mean() - 300.0) < 4.5 * block_error(temps), (temps.mean(), block_error(temps))
    var_ratio = (ke - ke.mean()) ** 2 / (0.5 * n_dof * kT**2)
    assert abs(var_ratio.mean() - 1.0) < 4.5 * block_error(var_ratio), (var_ratio.mean(), block_error(var_ratio))
    thin = ke[::100]  # 1 ps apart: nearly independent
    assert stats.kstest(thin, stats.gamma(0.5 * n_dof, scale=kT).cdf).pvalue > 1e-4


@pytest.mark.slow
def test_nose_hoover_mean_temperature(dipeptide):
    system, force_fn, cons = dipeptide
    x = jnp.asarray(system.positions)
    m = jnp.asarray(system.masses)
    x, _ = constrain_positions(cons, x, x, I.inverse_masses(m))
    v = I.maxwell_boltzmann(jax.random.PRNGKey(0), m, 300.0, positions=x, constraints=cons)
    n_dof = count_degrees_of_freedom(system.n_atoms, cons.n_constraints, True)
    nh = I.nose_hoover_chain()
    state = nh.init(x, v, m, force_fn, dt=0.002, temperature=300.0, collision_frequency=10.0, n_dof=n_dof)
    state, temps = sampled(nh, state, force_fn, cons, 20000, 5,
                           lambda st: I.temperature(st.velocities, st.masses, n_dof))
    temps = temps[1000:]
    # false failures per run: P(|t_19| > 4.5) = 2.5e-4 (20 independent blocks of 10 ps); the 3 K
    # floor only lowers it
    assert abs(temps.mean() - 300.0) < max(4.5 * block_error(temps), 3.0), (temps.mean(), block_error(temps))
