"""NVE energy conservation of rigid TIP3P water (SETTLE, reaction field, 2 fs), against OpenMM.

Both engines start from the same minimized, thermalized positions and velocities and run
velocity Verlet / OpenMM's VerletIntegrator with the same cutoff, reaction field and
dispersion correction; diffmd's energy drift must be no worse than twice OpenMM's.
"""

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import diffmd  # noqa: E402
from diffmd.md import simulate  # noqa: E402

openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402

# The bundled watbox216.crd box line is read as a skewed cell; its 216 waters fill this cube
# (see tests/test_barostat.py). Both engines use the cube.
WATER_BOX = np.eye(3) * 1.8774349
CUTOFF = 0.8  # below half the box width (0.94 nm)
DT = 0.002
STEPS, EVERY = 2500, 25  # 5 ps of NVE, 101 reports
KJ = unit.kilojoule_per_mole


def openmm_water(files):
    """OpenMM's system: rigid water, periodic reaction field at CUTOFF, dispersion correction
    (createSystem's default, as diffmd's), no centre-of-mass motion remover (plain NVE)."""
    prmtop = app.AmberPrmtopFile(files[0])
    system = prmtop.createSystem(nonbondedMethod=app.CutoffPeriodic, nonbondedCutoff=CUTOFF * unit.nanometer,
                                 constraints=app.HBonds, rigidWater=True, removeCMMotion=False)
    system.setDefaultPeriodicBoxVectors(*WATER_BOX)
    nb = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    assert nb.getUseDispersionCorrection() and nb.getReactionFieldDielectric() == pytest.approx(78.3)
    return system


def thermalized_start(files, seed=3):
    """Positions and velocities after a short minimization and 1 ps of Langevin at 300 K
    (Reference platform: deterministic for a seed, so the test is repeatable)."""
    system = openmm_water(files)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 5.0 / unit.picosecond, DT * unit.picosecond)
    integrator.setRandomNumberSeed(seed)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPeriodicBoxVectors(*WATER_BOX)
    ctx.setPositions(app.AmberInpcrdFile(files[1]).getPositions(asNumpy=True))
    ctx.applyConstraints(1e-8)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 200)
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, seed)
    integrator.step(500)
    # constrain tightly so that both engines start on the constraint surface
    ctx.applyConstraints(1e-10)
    ctx.applyVelocityConstraints(1e-10)
    state = ctx.getState(getPositions=True, getVelocities=True)
    x = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    v = state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
    return np.asarray(x), np.asarray(v)


def openmm_nve(files, x, v):
    """Potential and total energies [kJ/mol] every EVERY steps of OpenMM's leapfrog Verlet
    (its kinetic energy is that of the on-step velocities it estimates, not of v)."""
    system = openmm_water(files)
    integrator = openmm.VerletIntegrator(DT * unit.picosecond)
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPeriodicBoxVectors(*WATER_BOX)
    ctx.setPositions(x)
    ctx.setVelocities(v)
    potential, totals = [], []
    for k in range(STEPS // EVERY + 1):
        if k:
            integrator.step(EVERY)
        s = ctx.getState(getEnergy=True)
        potential.append(s.getPotentialEnergy().value_in_unit(KJ))
        totals.append(potential[-1] + s.getKineticEnergy().value_in_unit(KJ))
    return np.asarray(potential), np.asarray(totals)


def drift_and_fluctuation(t, total):
    """|slope| of a linear fit [kJ/mol/ps] and the std of the residuals about it [kJ/mol]."""
    slope, intercept = np.polyfit(t, total, 1)
    return abs(slope), float(np.std(total - (slope * t + intercept)))


@pytest.mark.slow
def test_nve_rigid_water_drift_within_twice_openmm():
    files = diffmd.data.water_box()
    x, v = thermalized_start(files)
    system = diffmd.load_amber(*files)
    system = system.with_positions(x, box=WATER_BOX, velocities=v)
    res = simulate(system, STEPS, integrator="verlet", dt=DT, constraints="hbonds", rigid_water=True,
                   nonbonded="cutoff", cutoff=CUTOFF, precision="double", report_every=EVERY, progress=False)
    t = res.time_ps
    ref_potential, ref = openmm_nve(files, x, v)
    assert res.total_energy.shape == ref.shape == t.shape

    # 216 rigid waters: 6 degrees of freedom each, COM motion not removed in NVE
    assert res.n_dof == 216 * 6
    ours, sd_ours = drift_and_fluctuation(t, res.total_energy)
    theirs, sd_theirs = drift_and_fluctuation(t, ref)
    duration = t[-1] - t[0]
    # The floor: a slope that moves the energy by one fluctuation std over the whole run is
    # indistinguishable from the noise of a single run (the truncated LJ jumps at the cutoff).
    floor = max(sd_ours, sd_theirs) / duration
    n = res.n_dof
    print(f"\nNVE rigid TIP3P, {duration:.1f} ps at {DT * 1000:g} fs, RF cutoff {CUTOFF} nm, n_dof={n}, "
          f"T={res.temperature.mean():.1f} K")
    print(f"  diffmd drift {ours:.4g} kJ/mol/ps ({ours / n:.3g} per dof), fluctuation {sd_ours:.4g} kJ/mol, "
          f"net change {res.total_energy[-1] - res.total_energy[0]:+.4g} kJ/mol")
    print(f"  OpenMM drift {theirs:.4g} kJ/mol/ps ({theirs / n:.3g} per dof), fluctuation {sd_theirs:.4g} kJ/mol, "
          f"net change {ref[-1] - ref[0]:+.4g} kJ/mol")
    print(f"  floor {floor:.4g} kJ/mol/ps")
    # both start in the same state: the same potential energy, and diffmd's kinetic energy is
    # that of the given velocities (OpenMM's differs by its half-step estimate, ~0.5 %)
    assert abs(res.potential_energy[0] - ref_potential[0]) < 1e-8 * abs(ref_potential[0])
    np.testing.assert_allclose(res.kinetic_energy[0], 0.5 * np.sum(system.masses[:, None] * v**2), rtol=1e-10)
    assert 250.0 < res.temperature.mean() < 350.0
    # false failures: none by sampling (the same start in both engines, double precision,
    # deterministic runs); the floor absorbs the noise of a single run's fitted slope
    assert ours <= 2 * theirs + floor, (ours, theirs, floor)
    # the fluctuation itself is OpenMM's, not a noisier integration
    assert sd_ours <= 2 * sd_theirs + 0.05, (sd_ours, sd_theirs)
