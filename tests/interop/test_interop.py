"""ASE calculator and jax-md adapters (``diffmd.ase``, ``diffmd.interop``): equality with diffmd's own
numbers, an ASE optimiser and ASE MD, jax-md's integrators on a diffmd potential, and a jax-md
energy function running in diffmd's runner and ensembles with diffmd's neighbor lists."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from diffmd.kernels.constants import ANGSTROM, EV
from diffmd.potentials.neural import sum_potentials

import diffmd
from diffmd import interop


@pytest.fixture(scope="module")
def ala():
    return diffmd.load_amber(*diffmd.data.alanine_dipeptide())


def test_to_ase_atoms(ala):
    atoms = ala.to_ase()
    assert list(atoms.numbers) == list(ala.topology.elements) and not atoms.pbc.any()
    np.testing.assert_allclose(atoms.get_positions() * ANGSTROM, ala.positions, rtol=1e-14)
    np.testing.assert_allclose(atoms.get_masses(), ala.masses)
    water = diffmd.load_amber(*diffmd.data.alanine_dipeptide_explicit())
    box_atoms = water.to_ase()
    assert box_atoms.pbc.all()
    np.testing.assert_allclose(box_atoms.cell[:] * ANGSTROM, water.box, rtol=1e-14)


def test_ase_calculator_equals_diffmd(ala):
    atoms = ala.to_ase()
    atoms.calc = diffmd.ase.Calculator(ala, implicit_solvent="obc2", precision="double")
    params, energy_fn = ala.energy_fn(implicit_solvent="obc2", precision="double")
    energy, grad = jax.value_and_grad(energy_fn, argnums=1)(params, ala.positions)
    assert atoms.get_potential_energy() == pytest.approx(float(energy) / EV, rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), -np.asarray(grad) * ANGSTROM / EV, rtol=1e-10, atol=1e-12)
    from ase.calculators.calculator import PropertyNotImplementedError

    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()


def test_ase_stress_matches_finite_differences():
    water = diffmd.load_amber(*diffmd.data.alanine_dipeptide_explicit())
    atoms = water.to_ase()
    calc = diffmd.ase.Calculator(water, nonbonded="cutoff", cutoff=0.9)
    atoms.calc = calc
    stress = atoms.get_stress()
    from ase.calculators.fd import calculate_numerical_stress

    numerical = calculate_numerical_stress(atoms, eps=1e-5)
    np.testing.assert_allclose(stress, numerical, rtol=1e-4, atol=1e-7)  # eV/A^3; FD error ~1e-7
    assert np.abs(stress).max() > 1e-4


def test_ase_optimiser_and_md(ala):
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import BFGS

    atoms = ala.to_ase()
    atoms.calc = diffmd.ase.Calculator(ala)
    e0 = atoms.get_potential_energy()
    assert BFGS(atoms, logfile=None).run(fmax=0.05, steps=300)
    assert atoms.get_potential_energy() < e0 - 0.1  # eV
    assert np.abs(atoms.get_forces()).max() < 0.05
    params, energy_fn = ala.energy_fn()
    minimized = float(energy_fn(params, atoms.get_positions() * ANGSTROM)) / EV
    assert atoms.get_potential_energy() == pytest.approx(minimized, rel=1e-12)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs, logfile=None)
    totals = []
    dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=5)
    dyn.run(100)
    assert np.ptp(totals) < 0.01 * 22 * 1.5 * units.kB * 300  # NVE: total energy kept to 1% of kinetic


def test_ase_calculator_errors(ala):
    with pytest.raises(diffmd.InputError, match="unknown energy option"):
        diffmd.ase.Calculator(ala, bogus=1)
    with pytest.raises(diffmd.InputError, match="only apply to the system's force field"):
        diffmd.ase.Calculator(ala, ala.energy_fn(), nonbonded="cutoff")
    atoms = ala.to_ase()[:5]
    atoms.calc = diffmd.ase.Calculator(ala)
    with pytest.raises(diffmd.InputError, match="5 entries but the diffmd system has 22"):
        atoms.get_potential_energy()


def test_diffmd_potential_in_jax_md_nve(ala):
    from jax_md import quantity, simulate, space

    params, energy_fn = ala.energy_fn(precision="double")
    energy, neighbor_fn = interop.to_jax_md((params, energy_fn))
    R = jnp.asarray(ala.positions)
    assert neighbor_fn.allocate(R).dense  # no cutoff: the all-pairs table (energy(R) builds it itself)
    assert float(energy(R)) == pytest.approx(float(energy_fn(params, R)), rel=1e-14)
    np.testing.assert_allclose(quantity.force(energy)(R), -jax.grad(energy_fn, argnums=1)(params, R), rtol=1e-12)
    _, shift = space.free()
    init, step = simulate.nve(energy, shift, dt=0.0005)
    state = init(jax.random.PRNGKey(0), R, kT=0.008314462618 * 300, mass=jnp.asarray(ala.masses)[:, None])
    step = jax.jit(step)

    def total(s):
        return float(energy(s.position) + quantity.kinetic_energy(momentum=s.momentum, mass=s.mass))

    e_start = total(state)
    for _ in range(100):
        state = step(state)
    assert abs(total(state) - e_start) < 0.5  # kJ/mol over 0.05 ps at 0.5 fs (kinetic ~ 80 kJ/mol)


def test_diffmd_cutoff_potential_in_jax_md_with_neighbors(ala):
    params, energy_fn = ala.energy_fn(nonbonded="cutoff", cutoff=0.6, precision="double")
    energy, neighbor_fn = interop.to_jax_md((params, energy_fn))
    R = jnp.asarray(ala.positions)
    nbrs = neighbor_fn.allocate(R)
    want = energy_fn(params, R, None, energy_fn.neighbor_list(ala.positions, None))
    assert float(energy(R, neighbor=nbrs)) == pytest.approx(float(want), rel=1e-13)
    moved = R + 0.01
    nbrs = jax.jit(neighbor_fn.update)(moved, nbrs)
    assert not bool(nbrs.overflow)
    assert float(energy(moved, neighbor=nbrs)) == pytest.approx(float(want), rel=1e-13)  # a translation


def _lj_box(n_side=4, spacing=0.38, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    return grid + rng.normal(scale=0.01, size=grid.shape), n_side * spacing


def test_jax_md_lj_as_diffmd_potential_matches_jax_md():
    from jax_md import energy, partition, space

    R, side = _lj_box()
    displacement, _ = space.periodic(side)
    kw = {"sigma": 0.34, "epsilon": 0.996, "r_onset": 0.6, "r_cutoff": 0.7}
    neighbor_fn, lj = energy.lennard_jones_neighbor_list(displacement, side, format=partition.Dense, **kw)
    R = jnp.asarray(R)
    want = lj(R, neighbor=neighbor_fn.allocate(R))
    pair = energy.lennard_jones_pair(displacement, **kw)(R)
    params, fn = interop.from_jax_md(lj, len(R), cutoff=kw["r_cutoff"])
    box = jnp.eye(3) * side
    nbrs = fn.neighbor_list(np.asarray(R), np.asarray(box))
    got = jax.jit(fn)(params, R, box, nbrs)
    assert float(got) == pytest.approx(float(want), rel=1e-12)
    assert float(got) == pytest.approx(float(pair), rel=1e-12)
    # after a move, diffmd's table (updated as the runner updates it) still gives jax-md's energy
    moved = R + 0.05 * jnp.asarray(np.random.default_rng(1).normal(size=R.shape))
    nbrs = diffmd.update_neighbors(nbrs, moved, box)
    assert float(fn(params, moved, box, nbrs)) == pytest.approx(float(lj(moved, neighbor=neighbor_fn.allocate(moved))),
                                                                  rel=1e-12)


def test_jax_md_network_params_are_differentiable():
    params = {"k": jnp.asarray(2.0)}
    params, fn = interop.from_jax_md(lambda p, R: p["k"] * jnp.sum(R**2), 3, params)
    R = jnp.ones((3, 3))
    assert float(jax.grad(lambda p: fn(p, R))(params)["k"]) == pytest.approx(9.0)


@pytest.mark.slow  # 25-110 s on 2 cores: CI's slow stage runs it (default suite < 15 min)
def test_jax_md_potential_runs_in_diffmd_runner_and_ensemble(ala, tmp_path):
    from jax_md import energy, partition, space

    from diffmd import ensemble
    from diffmd.md import simulate

    displacement, _ = space.free()
    # a soft repulsion between all atoms closer than 0.15 nm (bonded ones included), added to Amber
    _, soft = energy.soft_sphere_neighbor_list(displacement, 10.0, sigma=0.15, epsilon=5.0, format=partition.Dense)
    jmd = interop.from_jax_md(soft, ala.n_atoms, cutoff=0.15)
    potential = sum_potentials(ala.energy_fn(precision="double"), jmd)
    params, fn = potential
    nbrs = fn.neighbor_list(ala.positions)
    with jax.numpy_rank_promotion("allow"):  # jax-md's own neighbor list relies on rank promotion
        reference_nbrs = partition.neighbor_list(displacement, 10.0, 0.15, format=partition.Dense).allocate(
            jnp.asarray(ala.positions))
    direct = soft(jnp.asarray(ala.positions), neighbor=reference_nbrs)
    amber = ala.energy_fn(precision="double")
    assert float(fn(params, ala.positions, None, nbrs)) == pytest.approx(
        float(amber[1](amber[0], ala.positions)) + float(direct), rel=1e-12)
    assert float(direct) > 0.1
    result = simulate(ala, 40, potential=potential, precision="double", dt=0.001, report_every=20, seed=3,
                      progress=False)
    assert np.all(np.isfinite(result.potential_energy)) and result.potential_energy[0] == pytest.approx(
        float(fn(params, ala.positions, None, nbrs)), rel=1e-9)
    ens = ensemble.prepare(ala, replicas=2, potential=potential, precision="double", temperature=[300.0, 400.0],
                           seed=5)
    out = ensemble.simulate(ens, 20, report_every=10, progress=False)
    assert np.all(np.isfinite(np.asarray(out.potential_energy)))
    assert np.asarray(out.potential_energy).shape == (3, 2)  # (reports, members)
    np.testing.assert_allclose(np.asarray(out.potential_energy)[0], result.potential_energy[0], rtol=1e-9)
