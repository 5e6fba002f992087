"""``diffmd.io.file_kind``: files judged by content."""

import diffmd
from diffmd.io import file_kind


def test_amber_coordinates_with_a_blank_title_are_amber(tmp_path):
    """An inpcrd's title line may be empty (tleap writes one for the bundled T4 lysozyme): the
    second line still holds the atom count (stripping leading blank lines made it 'unknown')."""
    assert file_kind(diffmd.data.t4_lysozyme()[1]) == "amber-ascii"
    crd = tmp_path / "blank-title.crd"
    crd.write_text("\n    2\n   0.0000000   0.0000000   0.0000000   0.1000000   0.0000000   0.0000000\n")
    assert file_kind(crd) == "amber-ascii"


def test_openmm_xml_with_leading_whitespace_is_recognised(tmp_path):
    system = tmp_path / "system.xml"
    system.write_text('\n\n<?xml version="1.0" ?>\n<!-- made by hand -->\n<System openmmVersion="8.1" type="System">\n')
    assert file_kind(system) == "openmm-system"
