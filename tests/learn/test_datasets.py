"""Data sets from simulation: generation labels, npz and extended XYZ round trips, splits, batches."""

import numpy as np
import pytest

import diffmd
from diffmd import datasets
from diffmd.kernels.constants import ANGSTROM, EV
from diffmd.kernels.errors import InputError
from openmm_reference import energies_and_forces, openmm_system


def _tiny(n_frames=5, n_atoms=4, periodic=False, seed=0):
    rng = np.random.default_rng(seed)
    return datasets.Dataset(
        positions=rng.normal(size=(n_frames, n_atoms, 3)), energies=rng.normal(size=n_frames) * 100,
        forces=rng.normal(size=(n_frames, n_atoms, 3)) * 500, elements=np.array([8, 1, 1, 6][:n_atoms]),
        boxes=np.broadcast_to(np.diag([2.0, 2.5, 3.0]), (n_frames, 3, 3)) if periodic else None,
        metadata={"note": "tiny"})


@pytest.fixture(scope="module")
def generated():
    """Frames from two batched replicas of alanine dipeptide (vacuum, Amber, 400 K)."""
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    data = datasets.generate(system, 6, 10, replicas=2, temperature=400.0, equilibrate=10, seed=3, minimize=False,
                             progress=False)
    return system, data


@pytest.mark.slow  # ~1 min of compilation (ensemble MD + Amber labels)
def test_generated_labels_are_the_force_field_at_the_frame(generated):
    system, data = generated
    assert len(data) == 6 and data.n_atoms == system.n_atoms and data.boxes is None
    np.testing.assert_array_equal(data.elements, system.topology.elements)
    # frames move: distinct, and away from the start
    assert np.min(np.abs(data.positions[1:] - data.positions[:-1]).max(axis=(1, 2))) > 1e-3
    # labels equal OpenMM's (Reference platform, double) at the recorded positions
    omm, _, _, _ = openmm_system(*diffmd.data.alanine_dipeptide())
    for k in (0, 5):
        _, total, forces = energies_and_forces(omm, data.positions[k])
        assert abs(data.energies[k] - total) < 1e-6 * max(abs(total), 1.0)
        np.testing.assert_allclose(data.forces[k], forces, rtol=0, atol=1e-6 * np.abs(forces).max())
    assert data.metadata["replicas"] == 2 and data.metadata["label_precision"] == "double"


@pytest.mark.parametrize("periodic", [False, True])
def test_npz_round_trip_is_exact(tmp_path, periodic):
    data = _tiny(periodic=periodic)
    path = tmp_path / "set.npz"
    datasets.save_npz(data, path)
    back = datasets.load_npz(path)
    for name in ("positions", "energies", "forces", "elements"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name))
    if periodic:
        np.testing.assert_array_equal(back.boxes, data.boxes)
    else:
        assert back.boxes is None
    assert back.metadata == {"note": "tiny"}
    assert datasets.load(path).energies.tolist() == data.energies.tolist()


def test_npz_rejects_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(InputError, match="not a diffmd data set"):
        datasets.load_npz(tmp_path / "x.npz")
    with pytest.raises(InputError, match="no such"):
        datasets.load_npz(tmp_path / "missing.npz")


@pytest.mark.parametrize("periodic", [False, True])
def test_extxyz_round_trip_units(tmp_path, periodic):
    data = _tiny(periodic=periodic)
    path = tmp_path / "set.xyz"
    datasets.write_extxyz(data, path)
    back = datasets.read_extxyz(path)
    # energies are written with every digit; positions and forces with 8 decimals in ASE units
    np.testing.assert_allclose(back.energies, data.energies, rtol=1e-15, atol=0)
    np.testing.assert_allclose(back.positions, data.positions, rtol=0, atol=0.51e-8 * ANGSTROM)
    np.testing.assert_allclose(back.forces, data.forces, rtol=0, atol=0.51e-8 * EV / ANGSTROM)
    np.testing.assert_array_equal(back.elements, data.elements)
    if periodic:
        np.testing.assert_allclose(back.boxes, data.boxes, atol=1e-11)
    else:
        assert back.boxes is None
    # the file holds ASE units: read it with ASE directly
    import ase.io

    atoms = ase.io.read(path, index=1)
    np.testing.assert_allclose(atoms.get_potential_energy(), data.energies[1] / EV, rtol=1e-15)
    np.testing.assert_allclose(atoms.positions, data.positions[1] / ANGSTROM, atol=0.51e-8)
    np.testing.assert_allclose(atoms.get_forces(), data.forces[1] / EV * ANGSTROM, atol=0.51e-8)


def test_read_extxyz_written_by_ase(tmp_path):
    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(1)
    images = []
    for k in range(3):
        atoms = ase.Atoms("OH2", positions=rng.normal(size=(3, 3)))
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 - k, forces=rng.normal(size=(3, 3)))
        images.append(atoms)
    path = tmp_path / "ase.extxyz"
    ase.io.write(path, images, format="extxyz")
    data = datasets.read_extxyz(path)
    assert len(data) == 3
    np.testing.assert_array_equal(data.elements, [8, 1, 1])
    # exactly the conversion factors of kernels.constants applied to the numbers in the file
    for k, atoms in enumerate(ase.io.read(path, index=":")):
        np.testing.assert_allclose(data.energies[k], atoms.get_potential_energy() * EV, rtol=1e-15)
        np.testing.assert_allclose(data.positions[k], atoms.positions * ANGSTROM, rtol=1e-15)
        np.testing.assert_allclose(data.forces[k], atoms.get_forces() * EV / ANGSTROM, rtol=1e-15)
    with pytest.raises(InputError, match="REF_energy"):
        datasets.read_extxyz(path, energy_key="REF_energy")


def test_split_is_disjoint_and_reproducible():
    data = _tiny(n_frames=50)
    train, val = datasets.split(data, 0.2, seed=7)
    assert len(train) == 40 and len(val) == 10
    pos = lambda d: {tuple(np.round(x.ravel(), 12)) for x in d.positions}  # noqa: E731
    assert not pos(train) & pos(val)
    assert pos(train) | pos(val) == pos(data)
    train2, val2 = datasets.split(data, 0.2, seed=7)
    np.testing.assert_array_equal(val.positions, val2.positions)
    _, val3 = datasets.split(data, 0.2, seed=8)
    assert not np.array_equal(val.energies, val3.energies)
    with pytest.raises(InputError, match="validation_fraction"):
        datasets.split(data, 1.0)


def test_batches_cover_each_epoch_and_depend_on_seed_and_step():
    n, b = 23, 5
    epoch = np.concatenate([datasets.batch_indices(n, b, k, seed=2) for k in range(n // b)])
    assert len(set(epoch.tolist())) == len(epoch) == 20
    np.testing.assert_array_equal(datasets.batch_indices(n, b, 6, seed=2), datasets.batch_indices(n, b, 6, seed=2))
    assert not np.array_equal(datasets.batch_indices(n, b, 0, seed=2), datasets.batch_indices(n, b, 0, seed=3))
    batches = list(datasets.iterate_batches(_tiny(n_frames=n), b, seed=2))
    assert len(batches) == 4 and all(len(x) == b for x in batches)


def test_dataset_validation():
    with pytest.raises(InputError, match="forces"):
        datasets.Dataset(np.zeros((2, 3, 3)), np.zeros(2), np.zeros((2, 4, 3)), np.ones(3))
    with pytest.raises(InputError, match="NaN"):
        datasets.Dataset(np.full((1, 1, 3), np.nan), np.zeros(1), np.zeros((1, 1, 3)), np.ones(1))
