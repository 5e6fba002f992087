"""Any potential where the Amber force field runs: ``simulate``, ensembles and ``diffmd run``
with ``potential=(params, energy_fn)`` (a neural model, or Amber plus a neural correction)."""

import dataclasses
import os

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import diffmd  # noqa: E402
from diffmd import datasets, ensemble, train  # noqa: E402
from diffmd.ensemble import stack, unstack  # noqa: E402
from diffmd.io import read_checkpoint_metadata  # noqa: E402
from diffmd.cli import main as cli_main  # noqa: E402
from diffmd.kernels.errors import InputError, UnsupportedError  # noqa: E402
from diffmd.potentials.neural import schnet, species_from_elements, sum_potentials  # noqa: E402
from diffmd.md import prepare  # noqa: E402


@pytest.fixture(scope="module")
def ala():
    return diffmd.load_amber(*diffmd.data.alanine_dipeptide())


@pytest.fixture(scope="module")
def corrected(ala):
    """Amber (no cutoff) plus a small SchNet correction whose table rebuilds often (small skin)."""
    species, _ = species_from_elements(ala.topology.elements)
    nn = schnet(species, cutoff=0.3, features=8, interactions=1, n_rbf=6, precision="double", skin=0.01,
                energy_scale=0.5, key=jax.random.PRNGKey(3))
    return sum_potentials(ala.energy_fn(precision="double"), nn)


def test_amber_as_potential_prepares_the_same_run(ala):
    """The system's own force field passed as potential= sets up the very same run (the runner
    after ``prepare`` does not know where the potential came from)."""
    kw = dict(precision="double", seed=4, constraints="hbonds")
    plain = prepare(ala, **kw)
    given = prepare(ala, potential=ala.energy_fn(precision="double"), **kw)
    for a, b in zip(jax.tree_util.tree_leaves(plain.carry), jax.tree_util.tree_leaves(given.carry)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert given.n_dof == plain.n_dof and given.box is None and plain.box is None
    np.testing.assert_array_equal(np.asarray(given.constraints.pairs), np.asarray(plain.constraints.pairs))


def _shrunk(ens, energy_fn):
    """``ens`` with every member's SchNet table cut to 2 partners per atom (it overflows at once)."""
    amber_table, nn_table = ens.carry.neighbors
    start = np.asarray(unstack(nn_table, 0).reference_positions)
    tiny = energy_fn.parts[1].neighbor_list(start, None, capacity=2)
    tables = (amber_table, stack([tiny] * ens.size))
    return dataclasses.replace(ens, carry=dataclasses.replace(ens.carry, neighbors=tables))


@pytest.mark.slow  # 25-110 s on 2 cores: CI's slow stage runs it (default suite < 15 min)
def test_ensemble_of_a_summed_potential_equals_separate_runs(ala):
    """Replicas of a sum of two small networks (a tuple of two tables with their own cutoffs and
    skins, rebuilt as atoms move) batched equal separate ``simulate`` runs with the same seeds.
    (Cheap to compile; Amber + SchNet, with an all-pairs table, is the slow test below.)"""
    species, _ = species_from_elements(ala.topology.elements)
    nets = [schnet(species, cutoff=cut, features=8, interactions=1, n_rbf=6, precision="double", skin=skin,
                   energy_scale=0.5, key=jax.random.PRNGKey(k)) for k, cut, skin in ((1, 0.3, 0.01), (2, 0.4, 0.03))]
    potential = sum_potentials(*nets)
    ens = ensemble.prepare(ala, replicas=2, seed=7, temperature=[300.0, 400.0], precision="double",
                           potential=potential)
    assert ens.settings["potential"] == "SumEnergy"
    got = ensemble.simulate(ens, 40, report_every=20, progress=False)
    for m, temperature in enumerate((300.0, 400.0)):
        alone = diffmd.simulate(ala, 40, temperature=temperature, seed=7 + m, precision="double", report_every=20,
                                progress=False, potential=potential)
        np.testing.assert_allclose(np.asarray(got.ensemble.carry.state.positions[m]), alone.positions, atol=1e-9)
        np.testing.assert_allclose(got.potential_energy[:, m], alone.potential_energy, rtol=1e-9)
    # both tables were rebuilt as the atoms moved
    for table in got.ensemble.carry.neighbors:
        assert np.abs(np.asarray(table.reference_positions) - np.asarray(ens.carry.state.positions)).max() > 0


@pytest.mark.slow  # three compilations of the batched Amber + SchNet chunk: ~1 min on 2 cores
def test_summed_potential_ensemble_overflow_is_reallocated_and_replayed(ala, corrected):
    """Amber + SchNet replicas: a too-small SchNet table in the tuple overflows; every member's is
    re-allocated (the all-pairs Amber table kept) and the chunk replayed: the same run as with ample
    tables, and one the correction changes."""
    ens = ensemble.prepare(ala, replicas=2, seed=7, temperature=[300.0, 400.0], precision="double",
                           potential=corrected)
    ample = ensemble.simulate(ens, 40, report_every=20, progress=False)
    grown = ensemble.simulate(_shrunk(ens, corrected[1]), 40, report_every=20, progress=False)
    assert ample.reallocations == 0 and grown.reallocations >= 1
    assert grown.ensemble.carry.neighbors[0] is not None and grown.ensemble.carry.neighbors[0].dense
    np.testing.assert_allclose(np.asarray(grown.ensemble.carry.state.positions),
                               np.asarray(ample.ensemble.carry.state.positions), atol=1e-9)
    np.testing.assert_allclose(grown.potential_energy, ample.potential_energy, rtol=1e-9)
    nn_params, nn_fn = corrected[0][1], corrected[1].parts[1]
    assert abs(float(nn_fn(nn_params, ala.positions, None, nn_fn.neighbor_list(ala.positions)))) > 1e-3


def test_potential_errors(ala, corrected):
    with pytest.raises(InputError, match="pair"):
        diffmd.simulate(ala, 10, potential=corrected[1])
    with pytest.raises(InputError, match="no effect with potential="):
        diffmd.simulate(ala, 10, potential=corrected, nonbonded="cutoff")
    with pytest.raises(InputError, match="implicit_solvent"):
        diffmd.simulate(ala, 10, potential=corrected, implicit_solvent="obc2")
    species, _ = species_from_elements(ala.topology.elements[:10])
    with pytest.raises(InputError, match="built for 10 atoms"):
        diffmd.simulate(ala, 10, potential=schnet(species, features=8, interactions=1, n_rbf=6))
    with pytest.raises(UnsupportedError, match="replicas of one system"):
        ensemble.prepare([ala, ala], potential=corrected)


@pytest.fixture(scope="module")
def training_frames(ala):
    """16 alanine dipeptide frames near the input structure, labelled by Amber."""
    rng = np.random.default_rng(0)
    x = np.asarray(ala.positions)[None] + 0.005 * rng.standard_normal((16, ala.n_atoms, 3))
    params, fn = ala.energy_fn(precision="double")
    energies, forces = datasets.label_frames(fn, params, x)
    return datasets.Dataset(x, energies, forces, ala.topology.elements)


@pytest.fixture(scope="module")
def saved_model(training_frames, tmp_path_factory):
    """A small SchNet fitted to 16 Amber frames, saved as ``diffmd train`` saves models."""
    folder = str(tmp_path_factory.mktemp("model"))
    params, fn, spec = train.build_model(dict(kind="schnet", features=8, interactions=1, n_rbf=6), training_frames)
    train.save_model(folder, params, spec)
    return folder


@pytest.fixture(scope="module")
def exploding_model(training_frames, tmp_path_factory):
    """The same SchNet with a 300 kJ/mol energy scale (a model that learned nothing), saved the same
    way: MD with it heats alanine dipeptide to ~16,000 K within 30 steps, every energy finite."""
    folder = str(tmp_path_factory.mktemp("exploding"))
    params, fn, spec = train.build_model(dict(kind="schnet", features=8, interactions=1, n_rbf=6, energy_scale=300.0),
                                         training_frames)
    train.save_model(folder, params, spec)
    return folder


def test_cli_model_run_that_overheats_fails(ala, exploding_model, tmp_path, capsys):
    """``diffmd run --model`` whose temperature leaves every physical range exits non-zero, naming the
    step, the temperature and the model's energy outside its training data; the files end at the
    last good report and the checkpoint is the last good one."""
    # the training frames' energy range per atom is recorded in model.json and loaded with the model
    span = train.load_model(exploding_model, ala.topology.elements)[1].training_energy_range
    assert span is not None and span[0] < span[1]
    prmtop, coords = diffmd.data.alanine_dipeptide()
    out = tmp_path / "hot"
    assert cli_main(["run", prmtop, coords, "--model", exploding_model, "--steps", "200", "--report-every", "5",
                     "--out", str(out), "--no-progress"]) == 2
    message = capsys.readouterr().err
    assert "diffmd run: error: step " in message and "the temperature reached" in message
    assert "outside its training data" in message and f"{span[0]:.5g} to {span[1]:.5g} kJ/mol per atom" in message
    failed_at = int(message.split("error: step ")[1].split(":")[0])
    rows = np.loadtxt(out / "state.csv", delimiter=",", skiprows=1, ndmin=2)
    last_good = (failed_at - 1) // 5 * 5
    assert rows[-1, 0] == last_good and (rows[:, 5] < 1500.0).all()
    assert read_checkpoint_metadata(out)["step"] == last_good


def _run_cli_model(ala, saved_model, out, extra=()):
    prmtop, coords = diffmd.data.alanine_dipeptide()
    assert cli_main(["run", prmtop, coords, "--model", saved_model, "--steps", "20", "--report-every", "10",
                     "--dt", "0.0005", "--out", out, "--no-progress", *extra]) == 0
    rows = np.loadtxt(os.path.join(out, "state.csv"), delimiter=",", skiprows=1, ndmin=2)
    assert rows.shape[0] == 3 and np.isfinite(rows[:, :6]).all()  # ns/day, the last column, starts empty
    # the reported starting energy is the model's (plus Amber's with --with-amber)
    params, fn = train.load_model(saved_model, ala.topology.elements)
    want = float(fn(params, ala.positions, None, fn.neighbor_list(ala.positions)))
    if extra:
        amber_params, amber = ala.energy_fn(precision="mixed")
        want += float(amber(amber_params, ala.positions, None, amber.neighbor_list(ala.positions)))
    np.testing.assert_allclose(rows[0, 2], want, rtol=1e-5)
    return read_checkpoint_metadata(out)["settings"]


def test_cli_runs_a_saved_model(ala, saved_model, tmp_path):
    assert _run_cli_model(ala, saved_model, str(tmp_path / "alone"))["potential"] == "NeuralEnergy"


@pytest.mark.slow  # another compilation of Amber + SchNet dynamics
def test_cli_runs_a_saved_model_with_amber(ala, saved_model, tmp_path):
    settings = _run_cli_model(ala, saved_model, str(tmp_path / "sum"), ["--with-amber"])
    assert settings["potential"] == "SumEnergy"


def test_cli_model_flag_errors(saved_model, capsys):
    prmtop, coords = diffmd.data.alanine_dipeptide()
    assert cli_main(["run", prmtop, coords, "--model", saved_model, "--nonbonded", "cutoff"]) == 2
    assert "--with-amber" in capsys.readouterr().err
    assert cli_main(["run", prmtop, coords, "--with-amber"]) == 2
    assert "only applies with --model" in capsys.readouterr().err
    assert cli_main(["run", prmtop, coords, "--model", os.path.dirname(saved_model)]) == 2
    assert "no model.json" in capsys.readouterr().err
    assert cli_main(["run", "--model", saved_model]) == 2
    assert "PRMTOP COORDS" in capsys.readouterr().err
