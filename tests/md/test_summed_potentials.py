"""Summed potentials (Amber + a neural correction) in the runner and the minimizer.

``sum_potentials`` models take a tuple of neighbor tables, one per part; the
runner and minimizer must update every table, notice an overflow in any of them,
re-allocate only the overflowing one and replay.
"""

import json

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import diffmd  # noqa: E402
from diffmd import md as I  # noqa: E402
from diffmd.md import Carry, any_overflow, neighbor_metadata, neighbor_template, run_dynamics  # noqa: E402
from diffmd.kernels.errors import InputError  # noqa: E402
from diffmd.potentials.neural import schnet, species_from_elements, sum_potentials  # noqa: E402


@pytest.fixture(scope="module")
def model():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    amber = system.energy_fn("cutoff", cutoff=1.0, precision="double")
    species, _ = species_from_elements(system.topology.elements)
    nn = schnet(species, cutoff=0.3, features=8, interactions=1, n_rbf=6, precision="double", skin=0.02,
                key=jax.random.PRNGKey(3))
    params, energy_fn = sum_potentials(amber, nn)
    ample = energy_fn.neighbor_list(system.positions, None)
    # the SchNet table allocated at a stretched copy of the molecule, exactly as large as it needed there: at
    # the real positions its first rebuild overflows (the Amber table stays valid)
    centre = system.positions.mean(axis=0)
    stale = nn[1].neighbor_list(centre + 1.3 * (system.positions - centre), None, margin=1.0)
    assert not bool(stale.overflow) and stale.capacity < ample[1].capacity
    return system, amber, nn, params, energy_fn, ample, (ample[0], stale)


def test_sum_under_jit_equals_parts(model):
    system, amber, nn, params, energy_fn, ample, _ = model
    assert all(not t.dense for t in ample)
    x = jnp.asarray(system.positions) + 0.003 * jax.random.normal(jax.random.PRNGKey(5), system.positions.shape)
    total = jax.jit(energy_fn)(params, x, None, ample)
    e_amber = amber[1](amber[0], x, None, ample[0])
    e_nn = nn[1](nn[0], x, None, ample[1])
    assert abs(float(e_nn)) > 1e-3  # the correction is not trivially zero
    np.testing.assert_allclose(float(total), float(e_amber) + float(e_nn), rtol=1e-12)


def _run(model, tables, fns, steps=20):
    system, _, _, params, energy_fn, ample, _ = model
    lm = I.langevin_middle()
    x = jnp.asarray(system.positions)
    m = jnp.asarray(system.masses)
    v = I.maxwell_boltzmann(jax.random.PRNGKey(0), m, 300.0)
    # starting forces from the ample tables, so both runs start from the same, correct state
    state = lm.init(x, v, m, I.make_force_fn(energy_fn, params, None, ample), dt=0.001, temperature=300.0,
                    friction=1.0, key=jax.random.PRNGKey(1))
    return run_dynamics(lm, energy_fn, params, Carry(state, tables), steps, n_dof=3 * system.n_atoms - 6,
                        dt_ps=0.001, chunk_size=10, chunk_fns=fns)


@pytest.mark.slow  # two compilations of Amber + SchNet dynamics: ~30 s on 2 cores
def test_overflow_replay_matches_ample_tables(model):
    *_, ample, small = model
    fns = {}
    big = _run(model, ample, fns)
    grown = _run(model, small, fns)
    assert big.reallocations == 0 and grown.reallocations == 1
    amber_table, nn_table = grown.carry.neighbors
    assert not any_overflow(grown.carry.neighbors)
    assert nn_table.capacity > small[1].capacity
    assert amber_table.capacity == small[0].capacity  # the table that fitted was kept
    # every step after the replay used complete tables: the same trajectory
    np.testing.assert_allclose(grown.positions, big.positions, atol=1e-9)
    np.testing.assert_allclose(grown.potential_energy, big.potential_energy, rtol=1e-9)
    assert np.isfinite(big.total_energy).all() and big.steps[-1] == 20


@pytest.mark.slow  # ~25 s on 2 cores (compiling L-BFGS over Amber + SchNet)
def test_minimize_summed_potential_regrows_overflowing_table(model):
    system, _, _, params, energy_fn, ample, small = model
    start = float(energy_fn(params, jnp.asarray(system.positions), None, ample))
    res = diffmd.minimize(energy_fn, params, system.positions, None, small, max_iterations=30)
    assert res.iterations > 0 and float(res.energy) < start - 1.0
    assert res.neighbors[1].capacity > small[1].capacity and not any_overflow(res.neighbors)
    # the reported energy is the model's with complete tables at the final positions
    fresh = energy_fn.neighbor_list(np.asarray(res.positions), None)
    np.testing.assert_allclose(float(energy_fn(params, res.positions, None, fresh)), float(res.energy), rtol=1e-10)


def test_checkpoint_metadata_for_a_tuple_of_tables(model):
    *_, ample, small = model
    meta = json.loads(json.dumps(neighbor_metadata(ample)))
    assert len(meta["tables"]) == 2
    restored = neighbor_template(small, meta)
    assert isinstance(restored, tuple)
    assert [t.idx.shape for t in restored] == [t.idx.shape for t in ample]
    assert [t.cell_capacity for t in restored] == [t.cell_capacity for t in ample]
    with pytest.raises(InputError, match="neighbor table"):
        neighbor_template(small[0], meta)
    with pytest.raises(InputError, match="neighbor table"):
        neighbor_template(small, neighbor_metadata(ample[0]))
