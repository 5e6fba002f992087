"""Bad input raises InputError naming the file, the flag and the problem, before any tracing."""


import numpy as np
import pytest

import diffmd
from diffmd import InputError

PRMTOP, CRD = diffmd.data.alanine_dipeptide()


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def prmtop_text():
    with open(PRMTOP) as fh:
        return fh.read()


def test_truncated_prmtop(tmp_path):
    text = prmtop_text()
    cut = text[: text.index("%FLAG BONDS_INC_HYDROGEN") + 200]
    with pytest.raises(InputError, match="BONDS_INC_HYDROGEN|missing %FLAG"):
        diffmd.load_amber(write(tmp_path, "t.prmtop", cut))


def test_missing_flag_is_named(tmp_path):
    text = prmtop_text()
    start = text.index("%FLAG CHARGE")
    end = text.index("%FLAG", start + 5)
    with pytest.raises(InputError, match=r"t\.prmtop: missing %FLAG CHARGE"):
        diffmd.load_amber(write(tmp_path, "t.prmtop", text[:start] + text[end:]))


def test_wrong_count_is_named(tmp_path):
    text = prmtop_text()
    start = text.index("%FLAG MASS")
    body_start = text.index("\n", text.index("%FORMAT", start)) + 1
    line_end = text.index("\n", body_start)
    broken = text[:body_start] + text[body_start:line_end][:-16] + text[line_end:]  # drop one mass
    with pytest.raises(InputError, match="MASS has 21 entries but POINTERS implies 22"):
        diffmd.load_amber(write(tmp_path, "t.prmtop", broken))


def test_old_format_prmtop_rejected(tmp_path):
    old = "alanine dipeptide\n" + "      22       7      12       9      25      11      41      24       0       0\n" * 3
    with pytest.raises(InputError, match="pre-Amber-7"):
        diffmd.load_amber(write(tmp_path, "old.prmtop", old))


def test_non_number_field(tmp_path):
    text = prmtop_text().replace("%FLAG MASS", "%FLAG MASS", 1)
    start = text.index("%FLAG MASS")
    body_start = text.index("\n", text.index("%FORMAT", start)) + 1
    broken = text[:body_start] + "  1.2345678Xyz+01" + text[body_start + 16:]
    with pytest.raises(InputError, match="MASS holds a field that is not a number"):
        diffmd.load_amber(write(tmp_path, "t.prmtop", broken))


def test_atom_count_mismatch():
    other = diffmd.data.cb7_b2("ligand")[1]
    with pytest.raises(InputError, match="holds 30 atoms but the topology has 22"):
        diffmd.load_amber(PRMTOP, other)


def test_nan_coordinates(tmp_path):
    with open(CRD) as fh:
        lines = fh.read().splitlines()
    lines[2] = "         nan" + lines[2][12:]
    with pytest.raises(InputError, match="NaN"):
        diffmd.load_amber(PRMTOP, write(tmp_path, "nan.crd", "\n".join(lines) + "\n"))


def test_truncated_coordinates(tmp_path):
    with open(CRD) as fh:
        lines = fh.read().splitlines()
    with pytest.raises(InputError, match="truncated or has the wrong atom count"):
        diffmd.load_amber(PRMTOP, write(tmp_path, "short.crd", "\n".join(lines[:-2]) + "\n"))


def test_missing_files(tmp_path):
    with pytest.raises(InputError, match="cannot read prmtop"):
        diffmd.load_amber(str(tmp_path / "nope.prmtop"))
    with pytest.raises(InputError, match="cannot read coordinates"):
        diffmd.load_amber(PRMTOP, str(tmp_path / "nope.crd"))


def test_zero_scee_on_a_real_14_pair_is_rejected(tmp_path):
    text = prmtop_text()
    assert "SCEE_SCALE_FACTOR" not in text  # old tleap file: defaults 1.2 / 2.0
    n_types = int(diffmd.io._prmtop.read_prmtop(PRMTOP).pointers["NPTRA"])
    zeros = "".join(f"{0.0:16.8E}" + ("\n" if (k + 1) % 5 == 0 else "") for k in range(n_types))
    text = text.rstrip("\n") + "\n%FLAG SCEE_SCALE_FACTOR\n%FORMAT(5E16.8)\n" + zeros.rstrip("\n") + "\n"
    with pytest.raises(InputError, match="SCEE/SCNB_SCALE_FACTOR is 0.0"):
        diffmd.load_amber(write(tmp_path, "t.prmtop", text))


def test_box_too_small_for_cutoff():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide_explicit())
    with pytest.raises(InputError, match="box too small for the cutoff"):
        system.energy_fn(nonbonded="cutoff", cutoff=2.0)


def test_unknown_options():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    with pytest.raises(InputError, match="unknown nonbonded method"):
        system.energy_fn(nonbonded="ewald-ish")
    with pytest.raises(InputError, match="unknown precision"):
        system.energy_fn(precision="quad")
    with pytest.raises(InputError, match="unknown implicit solvent"):
        system.energy_fn(implicit_solvent="gbn9")


def test_bad_positions_shape_and_nan():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    with pytest.raises(InputError, match=r"shape \(22, 3\)"):
        system.with_positions(np.zeros((21, 3)))
    bad = system.positions.copy()
    bad[4, 1] = np.nan
    with pytest.raises(InputError, match="atom 4"):
        system.with_positions(bad)


def test_cutoff_needs_neighbors():
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide_explicit())
    params, energy_fn = system.energy_fn(nonbonded="cutoff", cutoff=0.9)
    with pytest.raises(InputError, match="needs a neighbor table"):
        energy_fn(params, system.positions, system.box)


def test_netcdf_restart_with_velocities(tmp_path):
    from scipy.io import netcdf_file

    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide_explicit())
    path = str(tmp_path / "restart.ncrst")
    nc = netcdf_file(path, "w", version=2)
    nc.Conventions = b"AMBERRESTART"
    nc.createDimension("atom", system.n_atoms)
    nc.createDimension("spatial", 3)
    nc.createDimension("cell_spatial", 3)
    nc.createDimension("cell_angular", 3)
    xyz = nc.createVariable("coordinates", "d", ("atom", "spatial"))
    xyz[:] = system.positions * 10.0
    vel = nc.createVariable("velocities", "d", ("atom", "spatial"))
    vel.scale_factor = 20.455
    vel[:] = np.ones((system.n_atoms, 3)) / 20.455
    lengths = nc.createVariable("cell_lengths", "d", ("cell_spatial",))
    lengths[:] = [30.0, 31.0, 32.0]
    angles = nc.createVariable("cell_angles", "d", ("cell_angular",))
    angles[:] = [90.0, 90.0, 90.0]
    nc.close()
    loaded = diffmd.load_amber(diffmd.data.alanine_dipeptide_explicit()[0], path)
    np.testing.assert_allclose(loaded.positions, system.positions, atol=1e-12)
    np.testing.assert_allclose(loaded.velocities, 0.1, rtol=1e-7)  # 1 A/ps = 0.1 nm/ps (float32 attribute)
    np.testing.assert_allclose(np.diag(loaded.box), [3.0, 3.1, 3.2])  # the coordinate file's box wins
