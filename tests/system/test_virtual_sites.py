"""Virtual sites: every OpenMM kind placed and its forces spread as OpenMM does; 4- and 5-site
water models from OpenMM's ForceField; dynamics of a rigid TIP4P-Ew box."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import openmm
import pytest
from openmm import app, unit

import diffmd
from conftest import assert_energy_close, assert_forces_close
from diffmd.kernels.constraint_setup import constraints_from_pairs
from diffmd.kernels.constraints import constraint_deviations
from diffmd.kernels.virtual_sites import average_site, build_virtual_sites, local_coordinates_site, place

KJ, NM = unit.kilojoule_per_mole, unit.nanometer


def openmm_state(system, positions, box=None):
    """OpenMM's (energy [kJ/mol], forces [kJ/mol/nm], positions with sites placed [nm])."""
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    if box is not None:
        context.setPeriodicBoxVectors(*box)
    context.setPositions(positions)
    context.computeVirtualSites()
    state = context.getState(getEnergy=True, getForces=True, getPositions=True)
    return (state.getPotentialEnergy().value_in_unit(KJ), state.getForces(asNumpy=True).value_in_unit(KJ / NM),
            state.getPositions(asNumpy=True).value_in_unit(NM))


def every_kind_system():
    """Six real particles and five sites: one of each OpenMM kind, plus a site hung on a site."""
    rng = np.random.default_rng(7)
    real = np.array([[0, 0, 0], [0.15, 0, 0], [0.02, 0.14, 0], [0.1, 0.1, 0.12], [-0.1, 0.05, 0.08],
                     [0.3, 0.2, 0.1]]) + 0.01 * rng.standard_normal((6, 3))
    system = openmm.System()
    for m in (12.0, 1.008, 16.0, 14.0, 1.008, 12.0):
        system.addParticle(m)
    for _ in range(5):
        system.addParticle(0.0)
    system.setVirtualSite(6, openmm.TwoParticleAverageSite(0, 1, 0.3, 0.7))
    system.setVirtualSite(7, openmm.ThreeParticleAverageSite(0, 1, 2, 0.5, 0.3, 0.2))
    system.setVirtualSite(8, openmm.OutOfPlaneSite(2, 3, 4, 0.4, 0.3, 2.5))
    system.setVirtualSite(9, openmm.LocalCoordinatesSite([0, 1, 2, 3], [0.4, 0.3, 0.2, 0.1], [-1.0, 1.0, 0.0, 0.0],
                                                         [-1.0, 0.0, 0.5, 0.5], openmm.Vec3(0.05, -0.03, 0.08)))
    system.setVirtualSite(10, openmm.TwoParticleAverageSite(6, 5, 0.5, 0.5))
    nb = openmm.NonbondedForce()
    charges = [0.3, 0.1, -0.5, 0.2, 0.1, -0.2, 0.4, -0.3, 0.25, -0.35, 0.15]
    for i, q in enumerate(charges):
        nb.addParticle(q, 0.25 if i < 6 else 0.1, 0.4 if i < 6 else 0.0)
    for site, parents in ((6, (0, 1)), (7, (0, 1, 2)), (8, (2, 3, 4)), (9, (0, 1, 2, 3)), (10, (6, 5, 0, 1))):
        for p in parents:
            nb.addException(site, p, 0.0, 0.1, 0.0)
    for i in range(6):
        for j in range(i + 1, 6):
            nb.addException(i, j, 0.0, 0.1, 0.0)
    system.addForce(nb)
    bonds = openmm.HarmonicBondForce()
    for i, j in ((0, 1), (0, 2), (2, 3), (3, 4), (4, 5)):
        bonds.addBond(i, j, 0.12, 2e4)
    system.addForce(bonds)
    positions = np.concatenate([real, np.full((5, 3), 3.0)])  # sites far off: they must be placed
    return system, positions


def test_every_site_kind_placed_and_spread_as_openmm():
    system_omm, raw = every_kind_system()
    energy, forces, placed = openmm_state(system_omm, raw)
    system = diffmd.from_openmm(system_omm, raw)
    sites = system.physics.virtual_sites
    assert sites.n_sites == 5 and sites.levels == (4, 5)  # the site on a site is placed last
    got = np.asarray(place(raw, sites))
    np.testing.assert_allclose(got, placed, rtol=0, atol=1e-13)
    params, energy_fn = system.energy_fn()
    e, g = jax.jit(jax.value_and_grad(energy_fn, argnums=1))(params, raw)
    assert_energy_close(e, energy, 1e-12, what="sites energy")
    g = -np.asarray(g)
    assert_forces_close(g[:6], forces[:6], 1e-11, what="forces on real particles (sites' forces spread)")
    assert np.all(g[6:] == 0)  # a site feels nothing itself: its force is on its parents
    # pure and batchable: vmap over two conformations agrees with one at a time
    batch = np.stack([raw, raw + 0.01])
    out = jax.vmap(lambda x: place(x, sites))(batch)
    np.testing.assert_allclose(out[1], place(raw + 0.01, sites), rtol=0, atol=1e-14)


def test_site_definitions_are_checked():
    with pytest.raises(diffmd.InputError, match="massless"):
        build_virtual_sites([average_site(2, (0, 1), (0.5, 0.5))], 3, masses=np.array([1.0, 1.0, 1.0]))
    with pytest.raises(diffmd.InputError, match="cycle"):
        build_virtual_sites([average_site(2, (0, 3), (0.5, 0.5)), average_site(3, (1, 2), (0.5, 0.5))], 4)
    with pytest.raises(diffmd.InputError, match="out of range"):
        build_virtual_sites([local_coordinates_site(2, (0, 5), (1, 0), (-1, 1), (0, 0), (0.1, 0, 0))], 3)
    assert build_virtual_sites([], 3) is None
    x = jnp.arange(9.0).reshape(3, 3)
    assert place(x, None) is x


@functools.lru_cache(maxsize=None)
def water_box(files, model, size, method, cutoff, equilibrate=0):
    """(openmm.System, positions with sites placed [nm], box [nm], topology, velocities [nm/ps] or None)
    of a small water box from OpenMM's Modeller; with ``equilibrate`` steps, minimized and then
    run that long by OpenMM at 300 K (Modeller's tiled box starts with ~1400 kJ/mol of overlap
    at its faces, which heats any MD engine to ~3700 K in a few steps)."""
    forcefield = app.ForceField(*files)
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(forcefield, model=model, boxSize=openmm.Vec3(size, size, size) * NM)
    system = forcefield.createSystem(modeller.topology, nonbondedMethod=method, nonbondedCutoff=cutoff * NM)
    box = np.array([v.value_in_unit(NM) for v in modeller.topology.getPeriodicBoxVectors()])
    if not equilibrate:
        _, _, placed = openmm_state(system, modeller.positions)
        return system, placed, box, modeller.topology, None
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.002 * unit.picosecond)
    integrator.setRandomNumberSeed(1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(modeller.positions)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 200)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    integrator.step(equilibrate)
    state = context.getState(getPositions=True, getVelocities=True)
    return (system, state.getPositions(asNumpy=True).value_in_unit(NM), box, modeller.topology,
            state.getVelocities(asNumpy=True).value_in_unit(NM / unit.picosecond))


TIP4PEW = (("amber14-all.xml", "amber14/tip4pew.xml"), "tip4pew", 1.25, app.CutoffPeriodic, 0.6, 500)


@pytest.mark.parametrize("files,model,method,kind", [
    (TIP4PEW[0], "tip4pew", app.PME, "ThreeParticleAverageSite"),
    pytest.param(("tip5p.xml",), "tip5p", app.CutoffPeriodic, "OutOfPlaneSite", marks=pytest.mark.slow),
    pytest.param(("amber14/opc.xml",), "tip4pew", app.CutoffPeriodic, "ThreeParticleAverageSite",
                 marks=pytest.mark.slow),
], ids=["tip4pew-pme", "tip5p", "opc"])
def test_water_models_match_openmm(files, model, method, kind):
    system_omm, placed, box, topology, _ = water_box(files, model, 1.25, method, 0.6)
    kinds = {type(system_omm.getVirtualSite(i)).__name__ for i in range(system_omm.getNumParticles())
             if system_omm.isVirtualSite(i)}
    assert kinds == {kind}
    energy, forces, _ = openmm_state(system_omm, placed, box)
    system = diffmd.from_openmm(system_omm, placed, topology)
    params, energy_fn = system.energy_fn()  # the System's own method and cutoff
    assert energy_fn.nonbonded == ("pme" if method == app.PME else "cutoff") and energy_fn.cutoff == 0.6
    nbrs = energy_fn.neighbor_list(system.positions, system.box)
    shifted = np.where((system.masses == 0)[:, None], placed + 0.05, placed)  # sites are re-placed inside
    e, g = jax.jit(jax.value_and_grad(energy_fn, argnums=1))(params, shifted, system.box, nbrs)
    real = system.masses > 0
    assert_energy_close(e, energy, 1e-9, what=f"{model} energy")
    assert_forces_close(-np.asarray(g)[real], forces[real], 1e-9, what=f"{model} forces on atoms")


def tip4pew_run(steps, report_every, seed=0, friction=1.0):
    """diffmd's run of the equilibrated TIP4P-Ew box (OpenMM's positions and velocities to start)."""
    system_omm, placed, box, topology, velocities = water_box(*TIP4PEW)
    system = diffmd.from_openmm(system_omm, placed, topology).with_positions(placed, velocities=velocities)
    result = diffmd.simulate(system, steps, report_every=report_every, precision="mixed", seed=seed,
                             friction=friction, progress=False)
    return system, result


def test_tip4pew_box_runs_rigid_with_sites_in_place():
    system, result = tip4pew_run(200, 100)
    physics = system.physics
    cons = constraints_from_pairs(physics.constraint_pairs, physics.constraint_lengths, system.masses)
    n_water = int(np.sum(system.masses == 0))
    assert cons.water.shape[0] == n_water and cons.pairs.shape[0] == 0  # all SETTLE
    assert result.n_dof == 3 * 3 * n_water - 3 * n_water - 3  # OpenMM's count: massive atoms only
    x = jnp.asarray(result.positions)
    wdev, _ = constraint_deviations(cons, x, jnp.asarray(system.box))
    assert float(jnp.max(jnp.abs(wdev))) < 2e-5
    np.testing.assert_allclose(np.asarray(place(x, physics.virtual_sites)), result.positions, rtol=0, atol=1e-12)
    assert np.all(result.velocities[system.masses == 0] == 0)
    assert np.all(np.isfinite(result.potential_energy))
    # equilibrated at 300 K with 3 N - N_c - 3 degrees of freedom: every report within 5 sigma (sqrt(2/n_dof))
    assert np.all(np.abs(result.temperature - 300) < 5 * 300 * np.sqrt(2 / result.n_dof)), result.temperature


@pytest.mark.slow
def test_tip4pew_box_temperature_matches_openmm():
    """Mean temperature of diffmd and of OpenMM (same System, LangevinMiddle 300 K, 2 fs) agree
    with 300 K and with each other.

    False failures per run, from 20-block means (0.55 ps blocks; friction 5/ps decorrelates
    the temperature in ~0.1 ps: Student t, 19 dof): each engine against the bath at 5 standard
    errors, P(|t| > 5) = 8e-5 (a bias of LangevinMiddle's kinetic temperature at 2 fs, < 1% in
    water, is below one standard error here, 1.7-2.3 K measured: at worst P(t > 4) = 4e-4);
    diffmd against OpenMM at 4.5 combined errors, 2.5e-4. In all below 1e-3."""
    steps, every, skip = 6000, 20, 500
    system, result = tip4pew_run(steps, every, seed=3, friction=5.0)
    ours = np.asarray(result.temperature)[np.asarray(result.steps) > skip]

    system_omm, placed, box, _, velocities = water_box(*TIP4PEW)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 5.0 / unit.picosecond, 0.002 * unit.picosecond)
    integrator.setRandomNumberSeed(11)
    context = openmm.Context(system_omm, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(placed)
    context.setVelocities(velocities)
    n_dof = 3 * int(np.sum(system.masses > 0)) - system_omm.getNumConstraints() - 3
    theirs = []
    for step in range(every, steps + 1, every):
        integrator.step(every)
        if step > skip:
            ke = context.getState(getEnergy=True).getKineticEnergy().value_in_unit(KJ)
            theirs.append(2 * ke / (n_dof * diffmd.units.BOLTZMANN))

    def mean_sem(t):
        blocks = np.array_split(np.asarray(t), 20)
        means = np.array([b.mean() for b in blocks])
        return np.mean(t), means.std(ddof=1) / np.sqrt(len(means))

    (m1, s1), (m2, s2) = mean_sem(ours), mean_sem(theirs)
    print(f"diffmd {m1:.2f} +- {s1:.2f} K, OpenMM {m2:.2f} +- {s2:.2f} K")
    assert s1 < 6 and s2 < 6, (s1, s2)  # enough sampling for the bounds to mean something
    assert abs(m1 - 300) < 5 * s1, f"diffmd {m1:.1f} +- {s1:.1f} K"
    assert abs(m2 - 300) < 5 * s2, f"OpenMM {m2:.1f} +- {s2:.1f} K"
    assert abs(m1 - m2) < 4.5 * np.hypot(s1, s2), f"diffmd {m1:.1f} +- {s1:.1f} vs OpenMM {m2:.1f} +- {s2:.1f} K"
