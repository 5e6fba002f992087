"""Does constrained Langevin dynamics at 2 fs hold its bath temperature within 1%?

A known JAX implementation runs about 25% cold at 2 fs with H-bond constraints (its
constraint solver removes kinetic energy). A 22-atom peptide has too few degrees of
freedom to pin the mean to 1% in a run of reasonable length, so this uses alanine
dipeptide in 749 rigid TIP3P waters (2,269 atoms, about 4,500 degrees of freedom):
SETTLE for the waters and SHAKE/RATTLE for the peptide's H-bonds, periodic reaction
field 0.9 nm, mixed precision (the default), LangevinMiddle at 300 K and 1/ps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffmd
from diffmd import md as I
from diffmd.kernels.constants import BOLTZMANN
from diffmd.kernels.constraint_setup import build_constraints, count_degrees_of_freedom
from diffmd.kernels.constraints import constrain_positions, constraint_deviations

TARGET = 300.0
DT = 0.002
EQUILIBRATION_PS = 3.0
PRODUCTION_PS = 30.0
SAMPLE_EVERY = 5  # steps between kinetic-energy samples (10 fs)


def block_error(x, n_blocks=20):
    """Standard error of the mean of a correlated series from n_blocks block averages."""
    blocks = x[: len(x) // n_blocks * n_blocks].reshape(n_blocks, -1).mean(1)
    return blocks.std(ddof=1) / np.sqrt(n_blocks)


def run_langevin(system, energy_fn, params, cons, box, steps, sample_every, key=1):
    """Langevin from the bundled coordinates; the kinetic energy every sample_every steps."""
    dtype = jnp.float64
    m = jnp.asarray(system.masses, dtype)
    x = jnp.asarray(system.positions, dtype)
    x, ok = constrain_positions(cons, x, x, I.inverse_masses(m), box)
    assert bool(ok)
    nbrs = energy_fn.neighbor_list(np.asarray(x), np.asarray(box))
    v = I.maxwell_boltzmann(jax.random.PRNGKey(0), m, TARGET, positions=x, constraints=cons, box=box)
    lm = I.langevin_middle()
    state = lm.init(x, v, m, I.make_force_fn(energy_fn, params, box, nbrs), dt=DT, temperature=TARGET,
                    friction=1.0, key=jax.random.PRNGKey(key))

    @jax.jit
    def go(state, nbrs):
        def inner(_, carry):
            st, nb = carry
            st = lm.step(st, I.make_force_fn(energy_fn, params, box, nb), cons, box)
            return st, diffmd.update_neighbors(nb, st.positions, box)

        def outer(carry, _):
            st, nb = jax.lax.fori_loop(0, sample_every, inner, carry)
            return (st, nb), I.kinetic_energy(st.velocities, st.masses)

        return jax.lax.scan(outer, (state, nbrs), None, length=steps // sample_every)

    (state, nbrs), ke = go(state, nbrs)
    assert not bool(nbrs.overflow), "neighbor table overflowed: the sampled energies are not trusted"
    return state, np.asarray(ke)


def openmm_temperatures(prmtop, coords, steps, sample_every):
    """OpenMM's LangevinMiddle on the same system and settings: temperature [K] every sample_every steps."""
    import openmm as mm
    from openmm import app, unit

    prm, crd = app.AmberPrmtopFile(prmtop), app.AmberInpcrdFile(coords)
    system = prm.createSystem(nonbondedMethod=app.CutoffPeriodic, nonbondedCutoff=0.9, constraints=app.HBonds,
                              rigidWater=True)
    integrator = mm.LangevinMiddleIntegrator(TARGET, 1.0, DT)
    context = mm.Context(system, integrator, mm.Platform.getPlatformByName("CPU"))
    context.setPositions(crd.positions)
    context.setPeriodicBoxVectors(*crd.boxVectors)
    context.setVelocitiesToTemperature(TARGET, 1)
    n_dof = 3 * system.getNumParticles() - system.getNumConstraints() - 3
    temps = []
    for _ in range(steps // sample_every):
        integrator.step(sample_every)
        ke = context.getState(getEnergy=True).getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        temps.append(2.0 * ke / (n_dof * BOLTZMANN))
    return np.asarray(temps)


@pytest.mark.slow
def test_constrained_langevin_holds_300K_within_one_percent():
    """Mean temperature after equilibration within 1% of the bath and within 4 standard errors
    (block averages); kinetic-energy variance and distribution those of the constrained
    degrees of freedom (Gamma(n_dof / 2, kT)); constraints satisfied at the end. About 6 CPU
    minutes (16,500 steps of 2,269 atoms)."""
    from scipy import stats

    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide_explicit())
    params, energy_fn = system.energy_fn("cutoff", cutoff=0.9, precision="mixed")
    top = system.topology
    cons = build_constraints(system.terms.bond_idx, system.params.bond_r0, system.masses, top.elements, "hbonds",
                             rigid_water=True, residue_index=top.residue_index, residue_names=top.residue_names)
    cons = jax.tree_util.tree_map(jnp.asarray, cons)
    n_water = int(np.sum(np.asarray(cons.water_mask)))
    assert n_water > 700 and int(np.sum(np.asarray(cons.pair_mask))) > 0  # SETTLE and SHAKE both at work
    box = jnp.asarray(system.box, jnp.float64)
    n_dof = count_degrees_of_freedom(system.n_atoms, cons.n_constraints, True)

    steps = int(round((EQUILIBRATION_PS + PRODUCTION_PS) / DT))
    state, ke = run_langevin(system, energy_fn, params, cons, box, steps, SAMPLE_EVERY)
    assert not bool(state.constraint_failed)
    wdev, pdev = constraint_deviations(cons, state.positions, box)
    assert float(jnp.max(jnp.abs(wdev))) < 1e-5 and float(jnp.max(jnp.abs(pdev))) < 1e-5

    ke = ke[int(round(EQUILIBRATION_PS / DT)) // SAMPLE_EVERY:]
    kT = BOLTZMANN * TARGET
    temps = 2.0 * ke / (n_dof * BOLTZMANN)
    mean, err = float(temps.mean()), float(block_error(temps))
    print(f"mean temperature {mean:.2f} +- {err:.2f} K over {PRODUCTION_PS:g} ps ({n_dof} dof)")
    assert err < 1.0, f"the run is too short to resolve 1%: standard error {err:.2f} K"
    assert abs(mean - TARGET) < 0.01 * TARGET, f"{mean:.2f} K is more than 1% from {TARGET} K"
    # measured once (30 ps, seeds as here): 302.93 +- 0.92 K, +0.98%; OpenMM on the same system and
    # settings 301.76 +- 0.85 K: LangevinMiddle's kinetic temperature at 2 fs runs slightly warm in both
    assert abs(mean - TARGET) < 4.0 * err, f"{mean:.2f} +- {err:.2f} K is not consistent with {TARGET} K"
    ref = openmm_temperatures(*diffmd.data.alanine_dipeptide_explicit(), steps, SAMPLE_EVERY)
    ref = ref[int(round(EQUILIBRATION_PS / DT)) // SAMPLE_EVERY:]
    ref_mean, ref_err = float(ref.mean()), float(block_error(ref))
    print(f"OpenMM: {ref_mean:.2f} +- {ref_err:.2f} K")
    assert abs(mean - ref_mean) < 4.0 * np.hypot(err, ref_err), (mean, err, ref_mean, ref_err)
    # fluctuations: Var(KE) = n_dof / 2 (kT)^2 for the constrained degrees of freedom
    var_ratio = (ke - ke.mean()) ** 2 / (0.5 * n_dof * kT**2)
    assert abs(var_ratio.mean() - 1.0) < max(3.5 * block_error(var_ratio), 0.05)
    # shape of the distribution: Gamma(n_dof / 2) at the run's own mean temperature (a KS test
    # against the bath's kT would mostly re-test the mean, which it resolves to ~0.2%)
    thin = ke[::20]  # 0.2 ps apart: kinetic energy of liquid water decorrelates faster than that
    kT_run = ke.mean() / (0.5 * n_dof)
    assert stats.kstest(thin, stats.gamma(0.5 * n_dof, scale=kT_run).cdf).pvalue > 1e-3
