"""Replica exchange: the acceptance rules, stationarity of the swaps, and a tempering run on alanine dipeptide."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import diffmd
from diffmd import ensemble
from diffmd.kernels.constants import BOLTZMANN
from diffmd.kernels.errors import InputError
from diffmd.ensemble.replica_exchange import (HamiltonianExchange, TemperatureExchange, accept_swaps, exchange_log_ratio,
                                     swap_permutation, temperature_log_ratio)

TEMPERATURES = [300.0, 330.0, 365.0, 400.0]


@pytest.fixture(scope="module")
def tempering():
    """Alanine dipeptide in vacuum, 4 temperatures, Langevin 2 fs, hbonds, no cutoff."""
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    return ensemble.prepare(system, replicas=4, temperature=TEMPERATURES, seed=11, precision="double")


def _with_state(ens, **changes):
    return dataclasses.replace(ens, carry=dataclasses.replace(ens.carry, state=dataclasses.replace(
        ens.carry.state, **changes)))


# ----------------------------------------------------------------------------- pure rules


def test_rules_reduce_to_the_textbook_formulas_and_accept_with_that_probability():
    beta_i, beta_j = np.array([0.40, 0.40, 0.35]), np.array([0.36, 0.40, 0.30])
    u_i, u_j = np.array([-12.0, 4.0, 7.0]), np.array([-10.0, 9.0, 1.0])
    trex = np.asarray(temperature_log_ratio(beta_i, beta_j, u_i, u_j))
    np.testing.assert_allclose(trex, (beta_i - beta_j) * (u_i - u_j), rtol=1e-15)
    # one Hamiltonian: U_i(x_j) = U(x_j), so the general rule is the temperature rule
    np.testing.assert_allclose(np.asarray(exchange_log_ratio(beta_i, beta_j, u_i, u_j, u_j, u_i)), trex, rtol=1e-14)
    # one temperature: -beta [(U_i(x_j) + U_j(x_i)) - (U_i(x_i) + U_j(x_j))]
    u_ij, u_ji = np.array([-9.0, 5.0, 3.0]), np.array([-11.5, 6.0, 2.0])
    np.testing.assert_allclose(np.asarray(exchange_log_ratio(beta_i, beta_i, u_i, u_j, u_ij, u_ji)),
                               -beta_i * ((u_ij + u_ji) - (u_i + u_j)), rtol=1e-14)

    log_ratio = jnp.log(jnp.array([0.3, 1.0, 2.0, 1e-40]))
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    accepted, probability = jax.jit(jax.vmap(accept_swaps, in_axes=(0, None)))(keys, log_ratio)
    np.testing.assert_allclose(np.asarray(probability[0]), [0.3, 1.0, 1.0, 1e-40], rtol=1e-12)
    rate = np.asarray(accepted).mean(axis=0)
    assert abs(rate[0] - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 20000)
    assert rate[1] == 1.0 and rate[2] == 1.0 and rate[3] == 0.0

    perm = np.asarray(swap_permutation(5, jnp.array([0, 2]), jnp.array([1, 3]), jnp.array([True, False])))
    np.testing.assert_array_equal(perm, [1, 0, 2, 3, 4])


def _ks_pvalues(samples, dists):
    return [stats.kstest(samples[:, m], d.cdf).pvalue for m, d in enumerate(dists)]


def test_temperature_swaps_keep_every_temperatures_boltzmann_distribution():
    """Exact samples at each temperature stay exact samples after even and odd swap rounds (and would not
    without the Metropolis rule)."""
    kT = BOLTZMANN * np.array(TEMPERATURES)
    shape = 25.0  # U of 50 harmonic degrees of freedom ~ Gamma(25, kT)
    n = 20000
    energies = np.random.default_rng(1).gamma(shape, kT, size=(n, 4))
    beta = jnp.asarray(1.0 / kT)

    def round_(u, key, i, j, metropolis):
        accepted, _ = accept_swaps(key, temperature_log_ratio(beta[i], beta[j], u[i], u[j]))
        return u[swap_permutation(4, i, j, accepted if metropolis else jnp.ones(i.shape, bool))]

    batch = jax.jit(jax.vmap(round_, in_axes=(0, 0, None, None, None)), static_argnums=4)

    def rounds(metropolis):
        u = jnp.asarray(energies)
        for r, (i, j) in enumerate([([0, 2], [1, 3]), ([1], [2])]):
            u = batch(u, jax.random.split(jax.random.PRNGKey(r), n), jnp.array(i), jnp.array(j), metropolis)
        return np.asarray(u)

    dists = [stats.gamma(shape, scale=k) for k in kT]
    after = rounds(True)
    assert not np.array_equal(after, energies)  # swaps happened
    assert min(_ks_pvalues(after, dists)) > 1e-4
    assert min(_ks_pvalues(rounds(False), dists)) < 1e-6  # swapping without the rule is detected


def test_hamiltonian_swaps_keep_every_hamiltonians_boltzmann_distribution():
    kT = BOLTZMANN * 300.0
    k = np.array([400.0, 300.0, 220.0, 160.0])  # U_m(x) = k_m x^2 / 2 [kJ/mol/nm^2]
    n = 20000
    x = np.random.default_rng(2).normal(size=(n, 4)) * np.sqrt(kT / k)
    beta = jnp.full(2, 1.0 / kT)

    def round_(x, key, i, j, metropolis):
        u = lambda a, b: 0.5 * jnp.asarray(k)[a] * x[b] ** 2  # U_a(x_b)
        accepted, _ = accept_swaps(key, exchange_log_ratio(beta, beta, u(i, i), u(j, j), u(i, j), u(j, i)))
        return x[swap_permutation(4, i, j, accepted if metropolis else jnp.ones(i.shape, bool))]

    batch = jax.jit(jax.vmap(round_, in_axes=(0, 0, None, None, None)), static_argnums=4)

    def run(metropolis):
        keys = jax.random.split(jax.random.PRNGKey(3), n)
        return np.asarray(batch(jnp.asarray(x), keys, jnp.array([0, 2]), jnp.array([1, 3]), metropolis))

    dists = [stats.norm(0.0, np.sqrt(kT / km)) for km in k]
    assert min(_ks_pvalues(run(True), dists)) > 1e-4
    assert min(_ks_pvalues(run(False), dists)) < 1e-6


# ----------------------------------------------------------------------------- the moves on an ensemble


def test_temperature_exchange_follows_the_rule_and_keeps_member_temperatures(tempering):
    ens = tempering
    st = ens.carry.state
    offsets = jnp.arange(4, dtype=st.positions.dtype)[:, None, None] * 1e-3
    energies = jnp.array([-10.0, -30.0, -200.0, 1800.0])  # (0,1): p = 1; (2,3): p ~ exp(-57)
    ens = _with_state(ens, positions=st.positions + offsets, potential_energy=energies)
    before = ens.carry.state
    assert TemperatureExchange(every=50, seed=5)(ens, 30) is ens  # not an exchange step
    move = TemperatureExchange(every=50, seed=5)

    after = move(ens, 100).carry.state  # attempt 2: the even pairs (0,1), (2,3)
    kT = BOLTZMANN * np.array(TEMPERATURES)
    hand = [min(1.0, np.exp((1 / kT[a] - 1 / kT[b]) * (float(energies[a]) - float(energies[b]))))
            for a, b in [(0, 1), (2, 3)]]
    assert move.last["pairs"] == [(0, 1), (2, 3)]
    np.testing.assert_allclose(move.last["probability"], hand, rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(move.last["accepted"], [True, False])

    # configurations moved, temperatures stayed: member 0 still samples 300 K with member 1's configuration
    np.testing.assert_array_equal(np.asarray(after.kT), np.asarray(before.kT))
    np.testing.assert_array_equal(np.asarray(after.key), np.asarray(before.key))
    np.testing.assert_array_equal(np.asarray(after.positions)[[0, 1]], np.asarray(before.positions)[[1, 0]])
    np.testing.assert_array_equal(np.asarray(after.forces)[[0, 1]], np.asarray(before.forces)[[1, 0]])
    np.testing.assert_array_equal(np.asarray(after.potential_energy), np.asarray(energies[jnp.array([1, 0, 2, 3])]))
    np.testing.assert_allclose(np.asarray(after.velocities[0]), np.asarray(before.velocities[1]) * np.sqrt(300 / 330),
                               rtol=1e-14)
    np.testing.assert_allclose(np.asarray(after.velocities[1]), np.asarray(before.velocities[0]) * np.sqrt(330 / 300),
                               rtol=1e-14)
    for m in (2, 3):
        np.testing.assert_array_equal(np.asarray(after.positions[m]), np.asarray(before.positions[m]))
        np.testing.assert_array_equal(np.asarray(after.velocities[m]), np.asarray(before.velocities[m]))

    log = move.log()
    assert log["pairs"] == [[0, 1], [1, 2], [2, 3]]
    assert log["attempts"] == [1, 0, 1] and log["accepted"] == [1, 0, 0]
    assert log["acceptance"] == [1.0, None, 0.0]
    assert log["replica_at_member"] == [1, 0, 2, 3]
    assert log["temperatures_k"][0] == pytest.approx([300.0, 330.0], rel=1e-12)
    json.dumps(log)

    # the odd pair with an intermediate probability; reproducible from (seed, step)
    ens_mid = _with_state(ens, potential_energy=jnp.array([0.0, -45.0, -20.0, 0.0]))
    p_hand = min(1.0, np.exp((1 / kT[1] - 1 / kT[2]) * (-45.0 + 20.0)))
    decisions = []
    for _ in range(2):
        m = TemperatureExchange(every=50, seed=5)
        out = m(ens_mid, 150).carry.state
        np.testing.assert_allclose(m.last["probability"], [p_hand], rtol=1e-12)
        swapped = bool(m.last["accepted"][0])
        np.testing.assert_array_equal(np.asarray(out.positions[1]), np.asarray(before.positions[2 if swapped else 1]))
        decisions.append(swapped)
    assert decisions[0] == decisions[1]
    assert 0.05 < p_hand < 0.95


def test_hamiltonian_exchange_uses_the_cross_energies_and_recomputes_forces(tempering):
    ens = tempering
    st = ens.carry.state
    kT = BOLTZMANN * 300.0
    scale = jnp.array([1.0, 0.9, 1.0, 1.0], st.positions.dtype)[:, None]
    params = dataclasses.replace(ens.params, torsion_k=ens.params.torsion_k * scale)
    noise = jax.random.normal(jax.random.PRNGKey(4), st.positions.shape, st.positions.dtype) * 0.01
    positions = st.positions + noise
    batched_forces = jax.jit(ensemble.batched_forces, static_argnums=0)
    energy, forces = batched_forces(ens.energy_fn, params, ens.terms, positions, ens.box, ens.carry.neighbors)
    ens = _with_state(dataclasses.replace(ens, params=params), positions=positions, forces=forces,
                      potential_energy=energy, kT=jnp.full(4, kT, st.kT.dtype))

    # hand: U_i(x_j) from the batched energies with the positions of each pair swapped (batched_forces' energies
    # are batched_energy's; one compiled function keeps this test cheap)
    crossed, _ = batched_forces(ens.energy_fn, params, ens.terms, positions[jnp.array([1, 0, 3, 2])], ens.box,
                                ens.carry.neighbors)
    u, c = np.asarray(energy), np.asarray(crossed)
    log_r = [-(c[0] + c[1] - u[0] - u[1]) / kT, -(c[2] + c[3] - u[2] - u[3]) / kT]
    assert abs(log_r[0]) > 1e-3  # the torsion scaling matters at these configurations
    move = HamiltonianExchange(every=10, seed=1)
    new = move(ens, 20)  # even pairs (0,1), (2,3) of the one 300 K ladder
    assert move.last["pairs"] == [(0, 1), (2, 3)]
    np.testing.assert_allclose(move.last["probability"][0], min(1.0, np.exp(log_r[0])), rtol=1e-9)
    # identical Hamiltonians: the ratio is exactly one, the swap always accepted
    assert move.last["probability"][1] >= 1.0 - 1e-12 and move.last["accepted"][1]
    got = new.carry.state
    np.testing.assert_array_equal(np.asarray(got.positions)[[2, 3]], np.asarray(positions[jnp.array([3, 2])]))
    # every member's energy and forces are its own Hamiltonian's at its new positions
    e_ref, f_ref = batched_forces(ens.energy_fn, params, ens.terms, got.positions, ens.box, new.carry.neighbors)
    np.testing.assert_allclose(np.asarray(got.potential_energy), np.asarray(e_ref), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(got.forces), np.asarray(f_ref), rtol=1e-10, atol=1e-8)
    assert move.log()["attempts"] == [1, 0, 1]


def test_bad_settings_are_refused(tempering):
    for every in (0, -5, 2.5, True):
        with pytest.raises(InputError, match="every"):
            TemperatureExchange(every=every)
    move = TemperatureExchange(every=50)
    move(tempering, 30)
    with pytest.raises(InputError, match="chunk_size"):
        move(tempering, 60)  # step 50 fell inside a chunk: every is not a multiple of the chunk size
    fields = dataclasses.fields(diffmd.md.VerletState)
    nve = diffmd.md.VerletState(**{f.name: getattr(tempering.carry.state, f.name) for f in fields})
    verlet = dataclasses.replace(tempering, carry=dataclasses.replace(tempering.carry, state=nve))
    with pytest.raises(InputError, match="thermostat"):
        HamiltonianExchange(every=10)(verlet, 10)


# ----------------------------------------------------------------------------- tempering runs


def _check_run(result, ens, move, discard_steps, mean_sigmas, var_bounds, n_blocks=10):
    keep = result.steps >= result.steps[0] + discard_steps
    for m, target in enumerate(TEMPERATURES):
        t = result.temperature[keep, m]
        blocks = np.array([b.mean() for b in np.array_split(t, n_blocks)])
        se = blocks.std(ddof=1) / np.sqrt(len(blocks))
        # chi-squared with n_dof degrees of freedom: var(T) = 2 T^2 / n_dof
        ratio = t.var() / (2 * target**2 / ens.members[m].n_dof)
        block_ratios = np.array([b.var() for b in np.array_split(t, n_blocks)]) / (2 * target**2 / ens.members[m].n_dof)
        print(f"member {m}: {t.mean():.2f} +- {se:.2f} K (target {target:g}), var(T) ratio {ratio:.3f} "
              f"+- {block_ratios.std(ddof=1) / np.sqrt(n_blocks):.3f}")
        assert abs(t.mean() - target) < mean_sigmas * se + 0.01 * target, (m, t.mean(), se)
        assert var_bounds[0] < ratio < var_bounds[1], (m, ratio)
    log = result.move_log[move.name]
    assert log["pairs"] == [[0, 1], [1, 2], [2, 3]]
    assert all(0.0 <= a <= 1.0 for a in log["acceptance"])
    assert all(n > 0 for n in log["accepted"])  # every neighbouring pair swapped at least once
    assert sorted(log["replica_at_member"]) == [0, 1, 2, 3]
    return log


def test_tempering_run_keeps_each_members_temperature(tempering, tmp_path):
    move = TemperatureExchange(every=50, seed=2)
    result = ensemble.simulate(tempering, 2500, report_every=10, chunk_size=10, out=str(tmp_path), progress=False,
                               moves=[move])
    log = _check_run(result, tempering, move, discard_steps=500, mean_sigmas=4.0, var_bounds=(0.4, 1.8))
    assert sum(log["attempts"]) == 2500 // 50 * 3 // 2  # rounds alternate between 2 even pairs and 1 odd pair
    summary = json.loads((tmp_path / "ensemble.json").read_text())
    assert summary["moves"]["temperature_exchange"]["acceptance"] == log["acceptance"]


@pytest.mark.slow
def test_long_tempering_run_samples_each_temperatures_kinetic_energy_distribution(tempering):
    move = TemperatureExchange(every=50, seed=9)
    result = ensemble.simulate(tempering, 40000, report_every=10, chunk_size=10, progress=False, moves=[move])
    # false failures per run, four members: mean beyond 5 standard errors of 20 blocks (3.8 ps,
    # 8 thermostat times 1/(2 friction): independent; Student t, 19 dof, P = 8e-5) plus 1%: < 3.2e-4;
    # KS at p > 1e-4 on samples 0.5 ps apart: 4e-4; the variance bounds lie >= 4.4 standard errors
    # of the variance ratio away (measured 0.041-0.046; 4.5-6.8 K errors of the means): < 2e-5.
    # In all < 8e-4.
    log = _check_run(result, tempering, move, discard_steps=2000, mean_sigmas=5.0, var_bounds=(0.8, 1.25),
                     n_blocks=20)
    assert all(n >= 20 for n in log["accepted"])
    keep = result.steps >= result.steps[0] + 2000
    for m, target in enumerate(TEMPERATURES):
        kinetic = result.kinetic_energy[keep, m][::25]  # every 250 steps (0.5 ps): nearly independent
        dist = stats.gamma(tempering.members[m].n_dof / 2, scale=BOLTZMANN * target)
        assert stats.kstest(kinetic, dist.cdf).pvalue > 1e-4, m
