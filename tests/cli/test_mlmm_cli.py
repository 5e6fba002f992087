"""``diffmd run --model DIR --ml-atoms SELECTION``: hybrid ML/MM from the command line, its selection
strings and its errors."""

import os

import jax
import numpy as np
import pytest

import diffmd
from diffmd import datasets, train
from diffmd.cli import main as cli_main
from diffmd.free_energy import ligand_system, select_atoms
from diffmd.kernels.errors import InputError


@pytest.fixture(scope="module")
def cb7():
    return diffmd.load_amber(*diffmd.data.cb7_b2())


@pytest.fixture(scope="module")
def guest_model(cb7, tmp_path_factory):
    """A small untrained SchNet for the guest B2, saved as ``diffmd train`` saves models (its energy
    shift and scale fitted to 8 Amber-labelled frames of the guest alone)."""
    guest = select_atoms(cb7, "resname B2")
    alone = ligand_system(cb7, guest)
    rng = np.random.default_rng(0)
    x = np.asarray(alone.positions)[None] + 0.003 * rng.standard_normal((8, alone.n_atoms, 3))
    params, fn = alone.energy_fn(precision="double")
    energies, forces = datasets.label_frames(fn, params, x)
    frames = datasets.Dataset(x, energies, forces, alone.topology.elements)
    folder = str(tmp_path_factory.mktemp("guest-model"))
    params, _, spec = train.build_model(dict(kind="schnet", features=8, interactions=1, n_rbf=6, cutoff=0.5), frames)
    train.save_model(folder, params, spec)
    return folder


def test_selection_strings(cb7):
    guest = select_atoms(cb7, "resname B2")
    assert len(guest) == 30 and guest[0] == cb7.n_atoms - 30  # the guest follows the host
    np.testing.assert_array_equal(select_atoms(cb7, " resname b2 "), guest)
    np.testing.assert_array_equal(select_atoms(cb7, "0-3, 7,5"), [0, 1, 2, 3, 5, 7])
    np.testing.assert_array_equal(select_atoms(cb7, "resname B2, 0-1"), np.concatenate([[0, 1], guest]))
    with pytest.raises(InputError, match="no residue named 'LIG'.*residues there: .*B2"):
        select_atoms(cb7, "resname LIG")
    with pytest.raises(InputError, match="within 0-155"):
        select_atoms(cb7, "150-160")
    with pytest.raises(InputError, match="cannot read 'name C1'"):
        select_atoms(cb7, "name C1")
    with pytest.raises(InputError, match="empty"):
        select_atoms(cb7, " ")


def test_cli_runs_ml_mm(cb7, guest_model, tmp_path):
    prmtop, coords = diffmd.data.cb7_b2()
    out = str(tmp_path / "mlmm")
    assert cli_main(["run", prmtop, coords, "--model", guest_model, "--ml-atoms", "resname B2", "--steps", "10",
                     "--report-every", "5", "--dt", "0.001", "--precision", "double", "--out", out,
                     "--no-progress"]) == 0
    rows = np.loadtxt(os.path.join(out, "state.csv"), delimiter=",", skiprows=1, ndmin=2)
    assert rows.shape[0] == 3 and np.isfinite(rows[:, :6]).all()
    # the starting energy is ML/MM's: Amber without the guest's internal terms, plus the model on the guest
    params, fn = train.mlmm_model(guest_model, cb7, select_atoms(cb7, "resname B2"), precision="double")
    parts = jax.jit(fn.components)(params, cb7.positions, None, None)
    np.testing.assert_allclose(rows[0, 2], float(parts["mm"] - parts["mm_internal"] + parts["ml"]), rtol=1e-8)
    assert diffmd.io.read_checkpoint_metadata(out)["settings"]["potential"] == "MLMMEnergy"


def test_cli_ml_atoms_errors(guest_model, capsys):
    prmtop, coords = diffmd.data.cb7_b2()
    base = ["run", prmtop, coords, "--steps", "1"]
    assert cli_main(base + ["--ml-atoms", "resname B2"]) == 2
    assert "--ml-atoms selects the atoms a neural model describes: add --model DIR" in capsys.readouterr().err
    assert cli_main(base + ["--model", guest_model, "--ml-atoms", "resname LIG"]) == 2
    err = capsys.readouterr().err
    assert "no residue named 'LIG'" in err and "--ml-atoms" in err and "B2" in err
    # the model was trained on the 30-atom guest: 24 host atoms are another molecule
    assert cli_main(base + ["--model", guest_model, "--ml-atoms", "0-23"]) == 2
    err = capsys.readouterr().err
    assert "trained on 30 atoms (H" in err and "the ML selection has 24" in err
    assert cli_main(base + ["--model", guest_model, "--ml-atoms", "resname B2", "--with-amber"]) == 2
    assert "drop --with-amber" in capsys.readouterr().err
