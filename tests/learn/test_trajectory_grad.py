"""Gradients through simulation: checkpointed trajectories match finite differences and the
plain gradient, and their compiled memory grows sublinearly with the number of steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffmd
from diffmd import md as I
from diffmd.md import Carry
from diffmd.kernels.bonded import dihedral_angles
from diffmd.kernels.errors import InputError
from diffmd.md import prepare
from diffmd.learn.trajectory_grad import default_segment_length, make_trajectory_fn

PHI = jnp.array([[4, 6, 8, 14]])  # alanine dipeptide backbone C-N-CA-C


def cos_phi(state):
    return {"cos_phi": jnp.cos(dihedral_angles(state.positions, None, PHI)[0])}


@pytest.fixture(scope="module")
def prep():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    # Langevin, H-bond constraints, double precision: noise from the fixed key in the state
    return prepare(system, precision="double", seed=3)


def _chain_energy(params, positions, box, neighbors):
    # a bead-spring chain: cheap to compile, with a carry large enough to dominate the stored state
    r = jnp.linalg.norm(positions[1:] - positions[:-1], axis=-1)
    return jnp.sum(params["k"] * (r - params["r0"]) ** 2)


def _chain(n_atoms, constrained=False):
    """A Langevin bead-spring chain (optionally with every bond constrained)."""
    integ = I.langevin_middle(remove_com_interval=0)
    params = {"k": jnp.asarray(1000.0), "r0": jnp.asarray(0.15)}
    x = jnp.stack([0.15 * jnp.arange(n_atoms), 0.02 * jnp.sin(jnp.arange(n_atoms)), jnp.zeros(n_atoms)], axis=1)
    m = jnp.full((n_atoms,), 12.0)
    st = integ.init(x, jnp.zeros_like(x), m, I.make_force_fn(_chain_energy, params, None, None), dt=0.002,
                    temperature=300.0, friction=1.0, key=jax.random.PRNGKey(0))
    return integ, params, Carry(st, None)


def _loss_fn(prep, n_steps, **kw):
    traj = make_trajectory_fn(prep.integrator, prep.energy_fn, n_steps, observable=cos_phi, **kw)

    def loss(params):
        _, obs = traj(prep.carry, params, prep.box, prep.constraints)
        return jnp.mean(obs["cos_phi"]) + 1e-3 * jnp.mean(obs["potential_energy"])

    return loss


def _with(params, **fields):
    return params.__class__(**{**params.__dict__, **fields})


def test_chain_gradient_matches_finite_differences_and_plain_gradient():
    integ, params, carry = _chain(16)

    def make(**kw):
        traj = make_trajectory_fn(integ, _chain_energy, 40, observable=lambda s: {"x": s.positions}, **kw)
        return lambda p: jnp.mean(traj(carry, p)[1]["x"][:, -1, 0])  # mean x of the last bead

    g = jax.jit(jax.grad(make(segment_length=6)))(params)  # 6 segments + a remainder of 4
    g_plain = jax.jit(jax.grad(make(checkpoint=False)))(params)
    g_segments = jax.jit(jax.grad(make(segment_length=6, checkpoint_steps=False)))(params)
    value = jax.jit(make())
    for name, h in (("k", 1e-2), ("r0", 1e-6)):
        np.testing.assert_allclose(g[name], g_plain[name], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(g_segments[name], g_plain[name], rtol=1e-10, atol=1e-14)
        fd = (value({**params, name: params[name] + h}) - value({**params, name: params[name] - h})) / (2 * h)
        assert float(g[name]) == pytest.approx(float(fd), rel=1e-5), name
        assert float(g[name]) != 0.0


@pytest.mark.slow
def test_gradient_matches_finite_differences_and_plain_gradient(prep):
    n = 30
    loss = _loss_fn(prep, n, segment_length=7)  # 4 segments + a remainder of 2
    plain = _loss_fn(prep, n, checkpoint=False)
    g = jax.jit(jax.grad(loss))(prep.params)
    g_plain = jax.jit(jax.grad(plain))(prep.params)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_plain)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    assert float(jnp.abs(g.torsion_k).max()) > 0 and float(jnp.abs(g.charges).max()) > 0

    value = jax.jit(loss)
    rng = np.random.default_rng(0)
    for field, h in (("torsion_k", 1e-4), ("charges", 1e-6)):
        base = getattr(prep.params, field)
        d = jnp.asarray(rng.standard_normal(base.shape))
        fd = (value(_with(prep.params, **{field: base + h * d}))
              - value(_with(prep.params, **{field: base - h * d}))) / (2 * h)
        ad = float(jnp.vdot(getattr(g, field), d))
        assert ad == pytest.approx(float(fd), rel=2e-4, abs=1e-8), field


def test_observables_shape_and_every():
    integ, params, start = _chain(8)
    last_x = lambda s: {"x": s.positions[-1, 0]}  # noqa: E731
    traj = make_trajectory_fn(integ, _chain_energy, 12, every=3, observable=last_x, segment_length=2)
    carry, obs = jax.jit(traj)(start, params)
    assert set(obs) == {"potential_energy", "kinetic_energy", "x"}
    assert obs["x"].shape == (4,) and int(carry.state.step) == int(start.state.step) + 12
    # the same trajectory recorded every step: records 3, 6, 9, 12 are the every-3 ones
    _, every1 = jax.jit(make_trajectory_fn(integ, _chain_energy, 12, observable=last_x))(start, params)
    np.testing.assert_allclose(obs["x"], every1["x"][2::3], atol=1e-12)
    np.testing.assert_allclose(obs["potential_energy"], every1["potential_energy"][2::3], atol=1e-9)
    assert default_segment_length(4096) == 64
    with pytest.raises(InputError, match="divide"):
        make_trajectory_fn(integ, _chain_energy, 10, every=3)
    with pytest.raises(InputError, match="segment_length"):
        make_trajectory_fn(integ, _chain_energy, 10, segment_length=0)


def _temp_bytes(n, checkpoint):
    integ, params, carry = _chain(512)
    traj = make_trajectory_fn(integ, _chain_energy, n, checkpoint=checkpoint)

    def loss(p):
        return jnp.mean(traj(carry, p)[1]["potential_energy"])

    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes


def test_memory_grows_sublinearly():
    small, large = _temp_bytes(256, True), _temp_bytes(1024, True)
    plain_small, plain_large = _temp_bytes(256, False), _temp_bytes(1024, False)
    # sqrt(4) = 2 in theory; the plain gradient stores every step (about 4x)
    assert large < 2.5 * small, (small, large)
    assert plain_large > 3.0 * plain_small, (plain_small, plain_large)
