"""Constraint kernels: SETTLE, SHAKE/RATTLE, set-up helpers (checked against OpenMM's conventions)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from diffmd.kernels.constraint_setup import (build_constraints, count_degrees_of_freedom, find_waters,
                                             repartition_hydrogen_mass)
from diffmd.kernels.constraints import (Constraints, constrain_positions, constrain_velocities,
                                        constraint_deviations, constraint_velocity_errors, rattle_velocities,
                                        settle_positions, settle_velocities, shake_positions)
from diffmd.kernels.errors import InputError

D_OH, D_HH = 0.09572, 0.15136
M_O, M_H = 15.9994, 1.008


def rigid_waters(rng, n):
    """n TIP3P-shaped waters at random orientations and places: (3n, 3) positions [nm]."""
    theta = np.arccos(1 - D_HH**2 / (2 * D_OH**2))
    shape = np.array([[0, 0, 0], [D_OH, 0, 0], [D_OH * np.cos(theta), D_OH * np.sin(theta), 0]])
    out = []
    for _ in range(n):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        out.append(shape @ q.T + 2.0 * rng.random(3))
    return np.concatenate(out)


def water_set(n):
    idx = np.arange(3 * n, dtype=np.int32).reshape(n, 3)
    masses = np.tile([M_O, M_H, M_H], n)
    dist = np.tile([D_OH, D_HH], (n, 1))
    return idx, masses, dist


def triangle_pairs(idx, dist):
    pairs = np.concatenate([idx[:, [0, 1]], idx[:, [0, 2]], idx[:, [1, 2]]])
    lengths = np.concatenate([dist[:, 0], dist[:, 0], dist[:, 1]])
    return pairs, lengths


def random_rotation(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q


# --------------------------------------------------------------------------- SETTLE positions


def test_settle_leaves_satisfied_waters_unchanged():
    rng = np.random.default_rng(1)
    x0 = rigid_waters(rng, 50)
    idx, masses, dist = water_set(50)
    out = settle_positions(x0, x0, 1 / masses, idx, dist)
    np.testing.assert_allclose(out, x0, rtol=0, atol=1e-14)
    # a rigid motion of every water (rotation about its O plus a translation) also satisfies the
    # constraints: SETTLE must return it unchanged, not rotate it elsewhere
    moved = x0.copy()
    for w in range(50):
        block = x0[3 * w:3 * w + 3]
        rot = random_rotation(rng) if w % 2 else np.eye(3)
        small = np.eye(3) + 0.02 * (rot - np.eye(3))  # a small rotation (orthonormalised)
        small, _ = np.linalg.qr(small)
        small *= np.sign(np.diag(small))[None, :]
        moved[3 * w:3 * w + 3] = (block - block[0]) @ small.T + block[0] + 0.003 * rng.normal(size=3)
    out = settle_positions(x0, moved, 1 / masses, idx, dist)
    np.testing.assert_allclose(out, moved, rtol=0, atol=1e-12)


@pytest.mark.parametrize("eps", [1e-4, 1e-3, 1e-2])
def test_settle_moves_perturbed_water_by_at_most_the_perturbation(eps):
    rng = np.random.default_rng(2)
    n = 100
    x0 = rigid_waters(rng, n)
    idx, masses, dist = water_set(n)
    delta = eps * rng.normal(size=x0.shape)
    out = np.asarray(settle_positions(x0, x0 + delta, 1 / masses, idx, dist))
    cons = Constraints(idx, dist, np.ones(n, bool), np.zeros((0, 2), np.int32), np.zeros(0), np.zeros(0, bool))
    water_dev, _ = constraint_deviations(cons, out)
    assert np.abs(water_dev).max() < 1e-12
    # no atom ends farther from its old place than twice the water's largest perturbation
    pert = np.linalg.norm(delta.reshape(n, 3, 3), axis=-1).max(1)
    move = np.linalg.norm((out - x0).reshape(n, 3, 3), axis=-1).max(1)
    assert np.all(move <= 2.0 * pert)
    # the correction is (nearly) a mass-weighted projection: never longer than the perturbation
    mw = lambda y: np.sqrt((masses[:, None] * y**2).reshape(n, 9).sum(1))  # noqa: E731
    assert np.all(mw(out - x0 - delta) <= mw(delta))
    # centre of mass of each water is kept
    com = lambda y: (masses[:, None] * y).reshape(n, 3, 3).sum(1)  # noqa: E731
    np.testing.assert_allclose(com(out), com(x0 + delta), atol=1e-12)


def test_settle_equals_converged_shake_on_the_triangle():
    rng = np.random.default_rng(3)
    n = 20
    x0 = rigid_waters(rng, n)
    idx, masses, dist = water_set(n)
    xp = x0 + 0.005 * rng.normal(size=x0.shape)
    pairs, lengths = triangle_pairs(idx, dist)
    settle = settle_positions(x0, xp, 1 / masses, idx, dist)
    shake, ok = shake_positions(x0, xp, 1 / masses, pairs, lengths, tolerance=1e-13, max_iterations=2000)
    assert bool(ok)
    np.testing.assert_allclose(settle, shake, atol=1e-11)


def test_settle_handles_waters_split_by_the_periodic_boundary():
    rng = np.random.default_rng(4)
    n = 10
    box = np.diag([1.5, 1.6, 1.7])
    x0 = rigid_waters(rng, n)
    idx, masses, dist = water_set(n)
    xp = x0 + 0.003 * rng.normal(size=x0.shape)
    want = np.asarray(settle_positions(x0, xp, 1 / masses, idx, dist))
    # move single hydrogens by a box vector, as a wrapping step would
    shift = np.zeros_like(x0)
    shift[1::3] += box[0]
    shift[5::6] -= box[2]
    got = np.asarray(settle_positions(x0 + shift, xp + shift, 1 / masses, idx, dist, box=box))
    np.testing.assert_allclose(got - shift, want, atol=1e-12)


def test_settle_velocities_remove_only_constrained_components():
    rng = np.random.default_rng(5)
    n = 30
    x0 = rigid_waters(rng, n)
    idx, masses, dist = water_set(n)
    v = rng.normal(size=x0.shape)
    vs = settle_velocities(x0, v, 1 / masses, idx)
    cons = Constraints(idx, dist, np.ones(n, bool), np.zeros((0, 2), np.int32), np.zeros(0), np.zeros(0, bool))
    assert np.abs(constraint_velocity_errors(cons, x0, vs)[0]).max() < 1e-12
    np.testing.assert_allclose(settle_velocities(x0, vs, 1 / masses, idx), vs, atol=1e-13)  # idempotent
    pairs, _ = triangle_pairs(idx, dist)
    vr, ok = rattle_velocities(x0, v, 1 / masses, pairs, tolerance=1e-13, max_iterations=500)
    assert bool(ok)
    np.testing.assert_allclose(vs, vr, atol=1e-11)
    # momentum of each water is conserved
    p = lambda u: (masses[:, None] * u).reshape(n, 3, 3).sum(1)  # noqa: E731
    np.testing.assert_allclose(p(vs), p(v), atol=1e-12)


# --------------------------------------------------------------------------- SHAKE / RATTLE


def chain_molecule(rng, n_chains=4):
    """Butane-like chains with hydrogens: (positions, masses, pairs, lengths)."""
    pos, masses, pairs, lengths = [], [], [], []
    for c in range(n_chains):
        base = len(masses)
        for k in range(4):  # carbons in a zig-zag
            pos.append([0.15 * k, 0.05 * (k % 2), 0.0] + 2.0 * np.array([c, 0, 0]))
            masses.append(12.011)
            if k:
                pairs.append([base + k - 1, base + k])
                lengths.append(0.1526)
        for k in range(4):  # one hydrogen on each carbon
            pos.append(np.array(pos[base + k]) + [0.0, 0.0, 0.109])
            masses.append(1.008)
            pairs.append([base + k, base + 4 + k])
            lengths.append(0.109)
    pos = np.array(pos) + 0.001 * rng.normal(size=(len(masses), 3))
    return pos, np.array(masses), np.array(pairs, np.int32), np.array(lengths)


def satisfied(pos, pairs, lengths, inv_masses):
    out, ok = shake_positions(pos, pos, inv_masses, pairs, lengths, tolerance=1e-14, max_iterations=5000)
    assert bool(ok)
    return np.asarray(out)


def test_shake_converges_to_tolerance_and_flags_failure():
    rng = np.random.default_rng(6)
    pos, masses, pairs, lengths = chain_molecule(rng)
    x0 = satisfied(pos, pairs, lengths, 1 / masses)
    xp = x0 + 0.01 * rng.normal(size=x0.shape)
    for tol in (1e-5, 1e-10):
        out, ok = shake_positions(x0, xp, 1 / masses, pairs, lengths, tolerance=tol)
        assert bool(ok)
        r = np.linalg.norm(np.asarray(out)[pairs[:, 1]] - np.asarray(out)[pairs[:, 0]], axis=1)
        assert np.abs(r / lengths - 1).max() <= tol
    _, ok = shake_positions(x0, xp, 1 / masses, pairs, lengths, tolerance=1e-10, max_iterations=2)
    assert not bool(ok)
    # the flag survives jit and vmap, per replica: an already satisfied copy converges at once
    f = jax.jit(jax.vmap(lambda x: shake_positions(x0, x, 1 / masses, pairs, lengths, tolerance=1e-10,
                                                   max_iterations=2)[1]))
    assert np.asarray(f(np.stack([x0, xp]))).tolist() == [True, False]


def test_shake_padding_and_frozen_atoms():
    rng = np.random.default_rng(7)
    pos, masses, pairs, lengths = chain_molecule(rng, 2)
    x0 = satisfied(pos, pairs, lengths, 1 / masses)
    xp = x0 + 0.005 * rng.normal(size=x0.shape)
    want, _ = shake_positions(x0, xp, 1 / masses, pairs, lengths, tolerance=1e-12)
    # padded constraints (pointing anywhere, even at real atoms) change nothing
    pad_pairs = np.concatenate([pairs, [[0, 1], [0, 0]]]).astype(np.int32)
    pad_len = np.concatenate([lengths, [0.3, 0.0]])
    mask = np.concatenate([np.ones(len(pairs), bool), [False, False]])
    got, ok = shake_positions(x0, xp, 1 / masses, pad_pairs, pad_len, mask, tolerance=1e-12)
    assert bool(ok)
    np.testing.assert_allclose(got, want, atol=1e-14)
    # an atom with inverse mass 0 does not move
    invm = 1 / masses
    invm[0] = 0.0
    got, ok = shake_positions(x0, xp, invm, pairs, lengths, tolerance=1e-12)
    assert bool(ok)
    np.testing.assert_allclose(np.asarray(got)[0], xp[0], atol=0)


def test_rattle_velocities():
    rng = np.random.default_rng(8)
    pos, masses, pairs, lengths = chain_molecule(rng)
    x0 = satisfied(pos, pairs, lengths, 1 / masses)
    v = rng.normal(size=x0.shape)
    vr, ok = rattle_velocities(x0, v, 1 / masses, pairs, tolerance=1e-9)
    assert bool(ok)
    cons = Constraints(np.zeros((0, 3), np.int32), np.zeros((0, 2)), np.zeros(0, bool), pairs, lengths,
                       np.ones(len(pairs), bool))
    assert np.abs(constraint_velocity_errors(cons, x0, vr)[1]).max() <= 1e-9
    # the result is the mass-weighted projection: momentum kept, kinetic energy lowered
    np.testing.assert_allclose((masses[:, None] * vr).sum(0), (masses[:, None] * v).sum(0), atol=1e-10)
    assert (masses[:, None] * np.asarray(vr) ** 2).sum() < (masses[:, None] * v**2).sum()


def test_jit_and_vmap_match():
    rng = np.random.default_rng(9)
    pos, masses, pairs, lengths = chain_molecule(rng, 2)
    x0 = satisfied(pos, pairs, lengths, 1 / masses)
    xs = x0 + 0.005 * rng.normal(size=(3,) + x0.shape)
    f = lambda x: shake_positions(x0, x, 1 / masses, pairs, lengths, tolerance=1e-10)[0]  # noqa: E731
    loop = np.stack([jax.jit(f)(x) for x in xs])
    np.testing.assert_allclose(f(xs[0]), loop[0], atol=1e-14)  # eager == jit
    np.testing.assert_allclose(jax.vmap(f)(xs), loop, atol=1e-12)
    idx, wm, dist = water_set(4)
    w0 = rigid_waters(rng, 4)
    ws = w0 + 0.005 * rng.normal(size=(3,) + w0.shape)
    g = lambda x: settle_positions(w0, x, 1 / wm, idx, dist)  # noqa: E731
    np.testing.assert_allclose(jax.vmap(g)(ws), np.stack([jax.jit(g)(x) for x in ws]), atol=1e-14)
    np.testing.assert_allclose(jax.jit(g)(ws[0]), g(ws[0]), atol=1e-14)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(10)
    idx, wm, dist = water_set(3)
    w0 = rigid_waters(rng, 3)
    wp = w0 + 0.004 * rng.normal(size=w0.shape)
    wv = rng.normal(size=w0.shape)
    # jitted so that the many evaluations of check_grads reuse one compilation
    check_grads(jax.jit(lambda x, r: settle_positions(r, x, 1 / wm, idx, dist)), (wp, w0), order=1,
                modes=("fwd", "rev"), atol=1e-6, rtol=1e-6, eps=1e-6)
    check_grads(jax.jit(lambda x, v: settle_velocities(x, v, 1 / wm, idx)), (w0, wv), order=1,
                modes=("fwd", "rev"), atol=1e-6, rtol=1e-6, eps=1e-6)
    pos, masses, pairs, lengths = chain_molecule(rng, 1)
    x0 = satisfied(pos, pairs, lengths, 1 / masses)
    xp = x0 + 0.004 * rng.normal(size=x0.shape)
    v = rng.normal(size=x0.shape)
    shake = lambda x, r, d: shake_positions(r, x, 1 / masses, pairs, d, tolerance=1e-14,  # noqa: E731
                                            max_iterations=1000)[0]
    check_grads(jax.jit(shake), (xp, x0, lengths), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6, eps=1e-6)
    rattle = lambda x, u: rattle_velocities(x, u, 1 / masses, pairs, tolerance=1e-14)[0]  # noqa: E731
    check_grads(jax.jit(rattle), (x0, v), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6, eps=1e-6)


# --------------------------------------------------------------------------- set-up vs OpenMM


def _openmm_constraints(system):
    from openmm import unit

    out = {}
    for k in range(system.getNumConstraints()):
        i, j, d = system.getConstraintParameters(k)
        out[(min(i, j), max(i, j))] = d.value_in_unit(unit.nanometer)
    return out


def _ours(cons):
    out = {}
    for (i, j), d in zip(np.asarray(cons.pairs).tolist(), np.asarray(cons.lengths).tolist()):
        out[(min(i, j), max(i, j))] = d
    for (o, h1, h2), (doh, dhh) in zip(np.asarray(cons.water).tolist(), np.asarray(cons.water_distances).tolist()):
        out[(min(o, h1), max(o, h1))] = doh
        out[(min(o, h2), max(o, h2))] = doh
        out[(min(h1, h2), max(h1, h2))] = dhh
    return out


@pytest.mark.parametrize("mode", ["none", "hbonds", "allbonds"])
@pytest.mark.parametrize("which", ["alanine_dipeptide", "alanine_dipeptide_explicit"])
def test_build_constraints_matches_openmm(mode, which):
    import diffmd
    from openmm import app

    prmtop, crd = getattr(diffmd.data, which)()
    system = diffmd.load_amber(prmtop, crd)
    top = system.topology
    cons = build_constraints(system.terms.bond_idx, system.params.bond_r0, system.masses, top.elements, mode,
                             rigid_water=True, residue_index=top.residue_index, residue_names=top.residue_names)
    omm = app.AmberPrmtopFile(prmtop).createSystem(
        constraints={"none": None, "hbonds": app.HBonds, "allbonds": app.AllBonds}[mode], rigidWater=True)
    want = _openmm_constraints(omm)
    got = _ours(cons)
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want], rtol=1e-12)
    assert cons.n_constraints == omm.getNumConstraints()
    n_water = sum(r.name == "HOH" for r in app.AmberPrmtopFile(prmtop).topology.residues())
    assert cons.water.shape[0] == n_water


def test_water_hh_distance_from_angle_and_errors():
    elements = np.array([8, 1, 1])
    bonds = np.array([[0, 1], [0, 2]])
    masses = np.array([M_O, M_H, M_H])
    theta = np.deg2rad(104.52)
    cons = build_constraints(bonds, [D_OH, D_OH], masses, elements, "none",
                             angles=(np.array([[1, 0, 2]]), np.array([theta])))
    np.testing.assert_allclose(cons.water_distances[0, 1], 2 * D_OH * np.sin(theta / 2), rtol=1e-12)
    with pytest.raises(InputError, match="H-O-H angle"):
        build_constraints(bonds, [D_OH, D_OH], masses, elements, "none")
    with pytest.raises(InputError, match="unknown constraints"):
        build_constraints(bonds, [D_OH, D_OH], masses, elements, "hangles")
    # without rigid water, 'hbonds' constrains the two O-H bonds by SHAKE
    cons = build_constraints(bonds, [D_OH, D_OH], masses, elements, "hbonds", rigid_water=False)
    assert cons.water.shape[0] == 0 and cons.pairs.shape[0] == 2 and cons.n_constraints == 2
    # a hydroxyl is not a water
    assert find_waters(3, np.array([[0, 1], [0, 2]]), np.array([8, 1, 6])).shape == (0, 3)


def test_degrees_of_freedom():
    assert count_degrees_of_freedom(22, 12, True) == 66 - 12 - 3
    assert count_degrees_of_freedom(22, 12, False) == 66 - 12
    with pytest.raises(InputError):
        count_degrees_of_freedom(1, 0, True)


@pytest.mark.parametrize("which", ["alanine_dipeptide", "alanine_dipeptide_explicit"])
def test_hydrogen_mass_repartitioning_matches_openmm(which):
    import diffmd
    from openmm import app, unit

    prmtop, crd = getattr(diffmd.data, which)()
    system = diffmd.load_amber(prmtop, crd)
    got = repartition_hydrogen_mass(system.masses, system.terms.bond_idx, system.topology.elements, 1.5)
    omm = app.AmberPrmtopFile(prmtop).createSystem(constraints=app.HBonds, hydrogenMass=1.5 * unit.amu)
    want = np.array([omm.getParticleMass(i).value_in_unit(unit.amu) for i in range(omm.getNumParticles())])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(got.sum(), np.sum(system.masses), rtol=1e-12)
    with pytest.raises(InputError):
        repartition_hydrogen_mass(system.masses, system.terms.bond_idx, system.topology.elements, 8.0)


def test_constrain_both_kinds_together():
    rng = np.random.default_rng(11)
    pos, masses, pairs, lengths = chain_molecule(rng, 2)
    x_chain = satisfied(pos, pairs, lengths, 1 / masses)
    widx, wm, dist = water_set(5)
    x_w = rigid_waters(rng, 5)
    n_chain = len(masses)
    x0 = np.concatenate([x_chain, x_w])
    m = np.concatenate([masses, wm])
    cons = Constraints(widx + n_chain, dist, np.ones(5, bool), pairs, lengths, np.ones(len(pairs), bool),
                       tolerance=1e-10, velocity_tolerance=1e-10)
    xp = x0 + 0.004 * rng.normal(size=x0.shape)
    out, ok = jax.jit(constrain_positions)(cons, x0, xp, 1 / m)
    assert bool(ok)
    wd, pd = constraint_deviations(cons, out)
    assert max(np.abs(wd).max(), np.abs(pd).max()) <= 1e-10
    v = rng.normal(size=x0.shape)
    vc, ok = jax.jit(constrain_velocities)(cons, out, v, 1 / m)
    assert bool(ok)
    wv, pv = constraint_velocity_errors(cons, out, vc)
    assert max(np.abs(wv).max(), np.abs(pv).max()) <= 1e-10
    assert cons.n_constraints == 15 + len(pairs)
    # nothing to do without constraints
    same, ok = constrain_positions(None, x0, xp, 1 / m)
    assert same is xp and bool(ok)
    assert jnp.asarray(out).dtype == jnp.float64


def test_single_precision_keeps_float32_and_converges():
    """float32 positions with float64 constraint data (x64 on): solved in float32, to 1e-5."""
    rng = np.random.default_rng(12)
    pos, masses, pairs, lengths = chain_molecule(rng, 2)
    x0 = satisfied(pos, pairs, lengths, 1 / masses).astype(np.float32)
    xp = (x0 + 0.003 * rng.normal(size=x0.shape)).astype(np.float32)
    out, ok = jax.jit(lambda a, b: shake_positions(a, b, 1 / masses, pairs, lengths))(x0, xp)
    assert out.dtype == jnp.float32 and bool(ok)
    v = rng.normal(size=x0.shape).astype(np.float32)
    vr, ok = jax.jit(lambda a, b: rattle_velocities(a, b, 1 / masses, pairs))(out, v)
    assert vr.dtype == jnp.float32 and bool(ok)
    idx, wm, dist = water_set(5)
    w0 = rigid_waters(rng, 5).astype(np.float32)
    wp = (w0 + 0.003 * rng.normal(size=w0.shape)).astype(np.float32)
    ws = jax.jit(lambda a, b: settle_positions(a, b, 1 / wm, idx, dist))(w0, wp)
    assert ws.dtype == jnp.float32
    cons = Constraints(idx, dist, np.ones(5, bool), np.zeros((0, 2), np.int32), np.zeros(0), np.zeros(0, bool))
    assert np.abs(constraint_deviations(cons, ws)[0]).max() < 1e-5
