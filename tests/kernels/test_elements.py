"""Elements of prmtops without ATOMIC_NUMBER: guessed from atom names as OpenMM does, not from masses."""

import numpy as np
import pytest

import diffmd
from diffmd.data import alanine_dipeptide, t4_lysozyme, water_box
from diffmd.kernels.constraint_setup import find_waters

app = pytest.importorskip("openmm.app")


@pytest.mark.parametrize("files", [alanine_dipeptide(), t4_lysozyme("complex"), water_box()],
                         ids=["alanine-dipeptide", "t4l", "water-box"])
def test_elements_equal_openmms(files):
    system = diffmd.load_amber(*files)
    reference = [a.element.atomic_number if a.element is not None else 0
                 for a in app.AmberPrmtopFile(files[0]).topology.atoms()]
    np.testing.assert_array_equal(system.topology.elements, reference)


def test_repartitioned_masses_do_not_change_elements(tmp_path):
    """A prmtop written with heavy hydrogens (as DHFR's JAC.prmtop: H 3.024, O 11.968 amu) keeps its waters."""
    prmtop, coords = water_box()
    lines = open(prmtop).read().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("%FLAG MASS"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("%FLAG"))
    masses = " ".join(lines[start + 2:end]).split()
    heavy = ["3.0240000E+00" if float(m) < 2 else "1.1968000E+01" for m in masses]
    body = ["".join(f"{m:>16s}" for m in heavy[k:k + 5]) for k in range(0, len(heavy), 5)]
    path = tmp_path / "heavy.prmtop"
    path.write_text("\n".join(lines[:start + 2] + body + lines[end:]))
    system = diffmd.load_amber(str(path), coords)
    assert np.allclose(system.masses[:3], [11.968, 3.024, 3.024])
    assert set(system.topology.elements.tolist()) == {1, 8}
    waters = find_waters(system.n_atoms, np.asarray(system.terms.bond_idx), system.topology.elements,
                         system.topology.residue_index, system.topology.residue_names)
    assert len(waters) == 216
