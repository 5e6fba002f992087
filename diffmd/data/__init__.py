"""Small real Amber systems shipped with diffmd (see README.md in this folder).

Each function returns ``(prmtop_path, coordinates_path)`` as strings.
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def _pair(folder: str, prmtop: str, coords: str):
    return os.path.join(_HERE, folder, prmtop), os.path.join(_HERE, folder, coords)


def alanine_dipeptide():
    """Alanine dipeptide in vacuum (22 atoms, ff99SB-era Amber, mbondi2 radii)."""
    return _pair("alanine-dipeptide", "alanine-dipeptide.prmtop", "alanine-dipeptide.crd")


def alanine_dipeptide_explicit():
    """Alanine dipeptide in a TIP3P water box (2,269 atoms, orthorhombic box)."""
    return _pair("alanine-dipeptide-explicit", "alanine-dipeptide.prmtop", "alanine-dipeptide.crd")


def t4_lysozyme(part: str = "complex"):
    """T4 lysozyme L99A with p-xylene (2,621 atoms; ``part`` = complex, receptor or ligand)."""
    if part not in ("complex", "receptor", "ligand"):
        raise ValueError(f"part must be 'complex', 'receptor' or 'ligand', got {part!r}")
    return _pair("t4-lysozyme-l99a", f"{part}.prmtop", f"{part}.crd")


def cb7_b2(part: str = "complex-vacuum"):
    """Cucurbit[7]uril with guest B2 (``part`` = complex-vacuum, receptor, ligand or complex-explicit)."""
    if part not in ("complex-vacuum", "receptor", "ligand", "complex-explicit"):
        raise ValueError(f"unknown CB7-B2 part {part!r}")
    return _pair("cb7-b2", f"{part}.prmtop", f"{part}.inpcrd")


def water_box():
    """216 TIP3P waters in a triclinic (truncated-octahedron) box (648 atoms)."""
    return _pair("waterbox", "watbox216.prmtop", "watbox216.crd")
