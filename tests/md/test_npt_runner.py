"""NPT through the runner: the Monte Carlo barostat inside the jitted chunk, ``simulate(pressure=...)``
and ``diffmd run --pressure``.

The chunk's bookkeeping (which box each step uses, when moves happen, which keys they use, the
neighbor table's trial builds, vmap over boxes, overflow replay) is checked exactly on a small
toy model of diatomic molecules with Lennard-Jones contacts through a neighbor table, which
compiles in a second or two; files, checkpoints and the command line on the bundled 216-water box.
"""

import csv
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffmd
from diffmd import md as I
from diffmd.md import Carry, make_chunk, run_dynamics
from diffmd.md import apply_barostat, barostat_init, molecule_index
from diffmd.kernels.errors import InputError
from diffmd.kernels.geometry import minimum_image
from diffmd.kernels.neighbors import allocate_neighbors, exclusion_table
from diffmd.md import simulate

# ---------------------------------------------------------------------------------------------
# A toy periodic model: 27 rigid-ish diatomics, LJ between molecules through a neighbor table
# ---------------------------------------------------------------------------------------------

CUTOFF, SIGMA, EPSILON, BOND, K_BOND = 0.8, 0.3, 0.6, 0.1, 2e4
N_MOL = 27
PAIRS = np.array([(2 * m, 2 * m + 1) for m in range(N_MOL)])
FREQUENCY, CHUNK = 3, 6
# one integrator and one cache of jitted chunks for the whole module: the toy tests share compilations
INTEGRATOR = I.langevin_middle()
CHUNK_FNS: dict = {}


def toy_energy(params, x, box, nb):
    b = x[PAIRS[:, 1]] - x[PAIRS[:, 0]]
    return toy_lj(params, x, box, nb) + K_BOND * jnp.sum((jnp.sqrt(jnp.sum(b * b, axis=-1)) - BOND) ** 2)


def toy_lj(params, x, box, nb):
    n = x.shape[0]
    valid = nb.idx < n
    xj = x[jnp.where(valid, nb.idx, 0)]
    dr = minimum_image(x[:, None, :] - xj, box)
    r2 = jnp.sum(dr * dr, axis=-1)
    inside = valid & (r2 < CUTOFF**2)
    s6 = (SIGMA**2 / jnp.where(inside, r2, 1.0)) ** 3
    return 0.5 * jnp.sum(jnp.where(inside, 4.0 * params["epsilon"] * (s6 * s6 - s6), 0.0))


def toy_positions(length, seed=0):
    rng = np.random.default_rng(seed)
    grid = (np.stack(np.meshgrid(*[np.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) * length / 3
    d = rng.normal(size=(N_MOL, 3))
    d = 0.5 * BOND * d / np.linalg.norm(d, axis=1, keepdims=True)
    return np.stack([grid - d, grid + d], axis=1).reshape(-1, 3)


def toy_carry(length=2.0, pressure=2000.0, seed=0, capacity=None, margin=1.25):
    """A Langevin + barostat carry of the toy model (box ``length`` nm) and its parameters."""
    params = {"epsilon": jnp.asarray(EPSILON)}
    x = toy_positions(length, seed)
    box = np.eye(3) * length
    nb = allocate_neighbors(x, box, exclusion_table(2 * N_MOL, PAIRS), CUTOFF, 0.1, margin=margin,
                            capacity=capacity)
    m = jnp.full(2 * N_MOL, 12.0)
    key_v, key_l, key_b = jax.random.split(jax.random.PRNGKey(seed), 3)
    integ = INTEGRATOR
    xj, boxj = jnp.asarray(x), jnp.asarray(box)
    v = I.maxwell_boltzmann(key_v, m, 300.0, positions=xj, box=boxj)
    st = integ.init(xj, v, m, I.make_force_fn(toy_energy, params, boxj, nb), dt=0.002, temperature=300.0,
                    friction=1.0, key=key_l)
    baro = barostat_init(boxj, molecule_index(2 * N_MOL, PAIRS), pressure=pressure, temperature=300.0,
                         frequency=FREQUENCY)
    return integ, params, Carry(st, nb, baro, key_b)


def run(integ, params, carry, steps, **kw):
    return run_dynamics(integ, toy_energy, params, carry, steps, n_dof=3 * 2 * N_MOL, dt_ps=0.002,
                        chunk_size=CHUNK, chunk_fns=CHUNK_FNS, **kw)


def assert_trees_equal(a, b, rtol=0.0):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact) and rtol:
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol)
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_chunk_equals_hand_loop_of_steps_and_barostat_moves():
    """The NPT chunk is: each step at the barostat's box, then after step k with k % frequency == 0 one
    apply_barostat with fold_in(barostat_key, k). Same bits as that loop written out by hand."""
    integ, params, carry = toy_carry()
    n = 2 * CHUNK
    res = run(integ, params, carry, n)

    step_nvt = jax.jit(make_chunk(integ, toy_energy, 1))  # the constant-volume step, box as an argument
    move = jax.jit(lambda bs, key, st, nb: apply_barostat(bs, key, st, toy_energy, params, nb))
    st, nb, bs = carry.state, carry.neighbors, carry.barostat
    volumes = []
    for k in range(1, n + 1):
        c, _ = step_nvt(Carry(st, nb), params, bs.box)
        st, nb = c.state, c.neighbors
        if k % FREQUENCY == 0:
            bs, st, nb, _ = move(bs, jax.random.fold_in(carry.barostat_key, k), st, nb)
        volumes.append(float(bs.volume))
    out = res.carry
    assert_trees_equal(out, Carry(st, nb, bs, carry.barostat_key))
    # reports take the volume as the box's determinant, the barostat as its diagonal's product
    np.testing.assert_allclose(res.volume, [float(carry.barostat.volume)] + volumes[CHUNK - 1::CHUNK], rtol=1e-14)
    assert int(out.state.step) == n and int(out.barostat.total_attempts) == n // FREQUENCY
    # the volume moved (some move was accepted) and the table was rebuilt for the new box
    assert 0 < int(out.barostat.total_accepted) and float(out.barostat.volume) != float(carry.barostat.volume)
    np.testing.assert_array_equal(np.asarray(out.neighbors.reference_box), np.asarray(out.barostat.box))
    assert not bool(out.neighbors.overflow)


def test_vmap_over_replicas_with_different_boxes():
    """One box, pressure and table per replica: vmap of the chunk equals one chunk per replica."""
    integ, params, c0 = toy_carry(length=2.0, pressure=1.0, seed=1)
    _, _, c1 = toy_carry(length=2.2, pressure=3000.0, seed=2, capacity=c0.neighbors.capacity)
    assert c0.neighbors.cell_capacity == c1.neighbors.cell_capacity and c0.neighbors.grid == c1.neighbors.grid
    batched, obs = jax.jit(jax.vmap(make_chunk(integ, toy_energy, CHUNK), in_axes=(0, None)))(
        jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), c0, c1), params)
    run(integ, params, c0, CHUNK)  # fills the module's cache of jitted chunks
    single = CHUNK_FNS[CHUNK]
    for i, c in enumerate((c0, c1)):
        one, one_obs = single(c, params)
        assert_trees_equal(jax.tree_util.tree_map(lambda t: t[i], batched), one, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(obs["volume"][i]), np.asarray(one_obs["volume"]), rtol=1e-12)
    assert not np.array_equal(np.asarray(batched.barostat.box[0]), np.asarray(batched.barostat.box[1]))


def test_ensemble_chunk_is_the_same_step_in_lockstep():
    """The ensemble's chunk vmaps the single run's step with neighbor rebuilds and barostat moves
    decided over all members: each replica keeps its own box, acceptance counts, step size and key,
    and follows the trajectory of its own single-run chunk (the lockstep rebuilds only add rebuilds,
    which change no force beyond rounding)."""
    from diffmd.ensemble import make_ensemble_chunk

    integ, params, c0 = toy_carry(length=2.0, pressure=1.0, seed=1)
    _, _, c1 = toy_carry(length=2.2, pressure=3000.0, seed=2, capacity=c0.neighbors.capacity)
    n = 4 * CHUNK
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), c0, c1)
    batched, obs = jax.jit(make_ensemble_chunk(integ, toy_energy, n))(stacked, jax.tree_util.tree_map(
        lambda a: jnp.stack([a, a]), params))
    single = jax.jit(make_chunk(integ, toy_energy, n))
    for i, c in enumerate((c0, c1)):
        one, one_obs = single(c, params)
        member = jax.tree_util.tree_map(lambda t: t[i], batched)
        assert int(member.barostat.total_attempts) == n // FREQUENCY
        assert int(member.barostat.total_accepted) == int(one.barostat.total_accepted) > 0
        np.testing.assert_array_equal(np.asarray(member.barostat.accepted), np.asarray(one.barostat.accepted))
        np.testing.assert_allclose(np.asarray(member.barostat.box), np.asarray(one.barostat.box), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(member.barostat.dv_max), np.asarray(one.barostat.dv_max), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(member.state.positions), np.asarray(one.state.positions), atol=1e-10)
        np.testing.assert_allclose(np.asarray(obs["volume"][:, i]), np.asarray(one_obs["volume"]), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(obs["potential_energy"][:, i]),
                                   np.asarray(one_obs["potential_energy"]), rtol=1e-10)
    assert not np.array_equal(np.asarray(batched.barostat.box[0]), np.asarray(batched.barostat.box[1]))


def test_trial_box_overflow_is_reallocated_and_replayed():
    """A table sized exactly for the start overflows as a high pressure squeezes the box (in the
    steps' or the trial boxes' builds); run_dynamics re-allocates at the chunk's start box and
    replays: the same run as one started with a table large enough throughout."""
    integ, params, tight = toy_carry(pressure=3e4, margin=1.0)
    seen = []
    a = run(integ, params, tight, 8 * CHUNK, on_reallocate=seen.append)
    assert a.reallocations >= 1 and len(seen) == a.reallocations
    assert a.carry.neighbors.capacity > tight.neighbors.capacity and not bool(a.carry.neighbors.overflow)
    assert float(a.volume[-1]) < 0.99 * float(a.volume[0])  # the box did shrink
    _, _, roomy = toy_carry(pressure=3e4, capacity=a.carry.neighbors.capacity)
    b = run(integ, params, roomy, 8 * CHUNK)
    assert b.reallocations == 0
    np.testing.assert_array_equal(a.volume, b.volume)
    np.testing.assert_allclose(a.positions, b.positions, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a.potential_energy, b.potential_energy, rtol=1e-10)


def test_summed_potential_under_the_barostat_equals_the_single_one():
    """A sum of two potentials, each with its own table (the toy with 60% of the LJ well, plus 40% of
    it alone), under NPT: both tables follow every step and trial box, the same run as the toy."""
    from diffmd.potentials.neural import sum_potentials

    integ, params, carry = toy_carry()
    strong, weak = {"epsilon": 0.6 * params["epsilon"]}, {"epsilon": 0.4 * params["epsilon"]}
    both, summed = sum_potentials((strong, toy_energy), (weak, toy_lj))
    second = allocate_neighbors(np.asarray(carry.state.positions), np.asarray(carry.barostat.box),
                                exclusion_table(2 * N_MOL, PAIRS), CUTOFF, 0.15)  # another skin: rebuilt apart
    pair = Carry(carry.state, (carry.neighbors, second), carry.barostat, carry.barostat_key)
    n = 4 * CHUNK
    one = run(integ, params, carry, n)
    two = run_dynamics(integ, summed, both, pair, n, n_dof=3 * 2 * N_MOL, dt_ps=0.002, chunk_size=CHUNK)
    assert int(two.carry.barostat.total_accepted) > 0
    np.testing.assert_allclose(two.volume, one.volume, rtol=1e-12)
    np.testing.assert_allclose(two.positions, one.positions, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(two.potential_energy, one.potential_energy, rtol=1e-10)
    for table in two.carry.neighbors:  # each table was rebuilt for the final box
        np.testing.assert_array_equal(np.asarray(table.reference_box), np.asarray(two.carry.barostat.box))


def test_checkpointed_barostat_resumes_bit_for_bit(tmp_path):
    """N steps, checkpoint, restore into a fresh carry, N more == 2N steps (barostat state and key in
    the checkpoint; moves keyed by the step, so nothing depends on where the run was cut)."""
    from diffmd.io import restore_checkpoint, save_checkpoint

    integ, params, carry = toy_carry()
    whole = run(integ, params, carry, 4 * CHUNK)
    half = run(integ, params, carry, 2 * CHUNK)
    save_checkpoint(tmp_path, half.carry, {"step": 2 * CHUNK})
    template = jax.tree_util.tree_map(jnp.zeros_like, carry)  # same structure, no numbers
    restored, _ = restore_checkpoint(tmp_path, like=template)
    assert_trees_equal(restored, half.carry)
    resumed = run(integ, params, restored, 2 * CHUNK)
    assert_trees_equal(resumed.carry, whole.carry)
    assert int(whole.carry.barostat.total_attempts) == 4 * CHUNK // FREQUENCY and int(whole.carry.barostat.total_accepted) > 0


# ---------------------------------------------------------------------------------------------
# simulate, files, checkpoints and the command line on the 216-water box
# ---------------------------------------------------------------------------------------------

# The bundled watbox216.crd box line is read as a skewed cell; its waters fill this cube
# (see tests/test_barostat.py). The command line reads the box from the file, so the tests
# write a copy whose box line says so.
WATER_EDGE = 1.8774349
NPT_ARGS = ["--nonbonded", "cutoff", "--cutoff", "0.8", "--pressure", "1", "--barostat-frequency", "2",
            "--report-every", "10", "--precision", "double", "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def water_files(tmp_path_factory):
    prmtop, crd = diffmd.data.water_box()
    lines = open(crd).read().splitlines()
    lines[-1] = "".join(f"{v:12.7f}" for v in (10 * WATER_EDGE,) * 3 + (90.0,) * 3)
    fixed = tmp_path_factory.mktemp("water") / "watbox216_cube.crd"
    fixed.write_text("\n".join(lines) + "\n")
    system = diffmd.load_amber(prmtop, str(fixed))
    np.testing.assert_allclose(system.box, np.eye(3) * WATER_EDGE, atol=1e-12)
    return prmtop, str(fixed)


def read_csv(path):
    with open(path) as fh:
        table = list(csv.reader(fh))
    return table[0], np.array(table[1:], dtype=float)


@pytest.fixture(scope="module")
def cli_run(water_files, tmp_path_factory):
    from diffmd.cli import main

    out = tmp_path_factory.mktemp("npt") / "run"
    assert main(["run", *water_files, "--steps", "40", "--out", str(out), *NPT_ARGS]) == 0
    return out


def test_cli_pressure_writes_changing_volume_density_and_cells(cli_run, water_files):
    header, rows = read_csv(cli_run / "state.csv")
    assert header[6:8] == ["volume_nm3", "density_gcm3"]
    assert list(rows[:, 0]) == [0, 10, 20, 30, 40]
    volume, density = rows[:, 6], rows[:, 7]
    assert volume[0] == pytest.approx(WATER_EDGE**3, rel=1e-6)
    assert len(np.unique(volume)) > 2  # 20 moves: the box changed between reports
    mass = diffmd.load_amber(*water_files).masses.sum()
    np.testing.assert_allclose(density, mass / volume * 1e21 / 6.02214076e23, rtol=1e-5)
    # the checkpoint's barostat box is the last row's volume, and the DCD holds each frame's cell
    from diffmd.io import read_checkpoint_metadata, restore_checkpoint

    saved, meta = restore_checkpoint(cli_run)
    assert meta["settings"]["pressure_bar"] == 1.0 and meta["settings"]["barostat_frequency"] == 2
    assert abs(np.linalg.det(saved[".barostat.box"])) == pytest.approx(volume[-1], rel=1e-6)
    assert read_checkpoint_metadata(cli_run)["step"] == 40
    import mdtraj

    traj = mdtraj.load_dcd(str(cli_run / "trajectory.dcd"), top=str(cli_run / "topology.pdb"))
    np.testing.assert_allclose(traj.unitcell_volumes, volume, rtol=1e-5)


@pytest.mark.slow
def test_resume_with_barostat_is_bit_for_bit(cli_run, water_files, tmp_path):
    """40 steps, resumed to a total of 80 (through the command line) == 80 steps in one simulate call.

    Slow only for its two compilations of the water box's NPT chunk (~25 s on 2 idle cores); the
    default suite checks the same checkpoint round trip on the toy model above."""
    from diffmd.io import restore_checkpoint
    from diffmd.cli import main

    resumed = tmp_path / "resumed"
    shutil.copytree(cli_run, resumed)
    assert main(["run", *water_files, "--steps", "80", "--out", str(resumed), "--resume", *NPT_ARGS]) == 0
    system = diffmd.load_amber(*water_files)
    whole = simulate(system, 80, nonbonded="cutoff", cutoff=0.8, pressure=1.0, barostat_frequency=2,
                     report_every=10, precision="double", seed=3, progress=False, out=tmp_path / "whole")
    a, _ = restore_checkpoint(resumed)
    b, _ = restore_checkpoint(tmp_path / "whole")
    assert a.keys() == b.keys() and ".barostat.box" in a and ".barostat_key" in a
    for name in a:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), err_msg=name)
    _, rows_a = read_csv(resumed / "state.csv")
    _, rows_b = read_csv(tmp_path / "whole" / "state.csv")
    np.testing.assert_array_equal(rows_a[:, :8], rows_b[:, :8])
    np.testing.assert_allclose(whole.volume, rows_b[:, 6], atol=1e-6)
    # resuming without the barostat is refused, naming the setting
    with pytest.raises(InputError, match="pressure_bar"):
        simulate(system, 10, nonbonded="cutoff", cutoff=0.8, report_every=10, precision="double", seed=3,
                 progress=False, out=resumed, resume=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(nonbonded="nocutoff"), "nonbonded='cutoff' or 'pme'"),
    (dict(integrator="verlet"), "thermostat"),
    (dict(barostat_frequency=0), "barostat_frequency"),
    (dict(pressure=float("nan")), "finite"),
    (dict(implicit_solvent="obc2"), "implicit"),
])
def test_bad_uses_raise_input_error(water_files, kwargs, message):
    system = diffmd.load_amber(*water_files)
    kw = dict(nonbonded="cutoff", cutoff=0.8, pressure=1.0, progress=False)
    with pytest.raises(InputError, match=message):
        simulate(system, 10, **{**kw, **kwargs})


def test_pressure_without_a_box_raises():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    with pytest.raises(InputError, match="no periodic box"):
        simulate(system, 10, nonbonded="cutoff", pressure=1.0, progress=False)


def test_cli_barostat_frequency_needs_pressure(water_files, capsys):
    from diffmd.cli import main

    assert main(["run", *water_files, "--barostat-frequency", "10", "--nonbonded", "cutoff"]) == 2
    assert "--pressure" in capsys.readouterr().err
