"""A PDB and an SDF to try ``prepare`` on, written from the bundled T4 lysozyme L99A files.

The bundled receptor and p-xylene come as Amber files; ``write_t4_lysozyme_inputs`` turns them
back into what a user starts from: the protein as a PDB (hydrogens as OpenMM writes them) and the
ligand as an SDF in its bound pose, with bond orders perceived from its geometry (RDKit).
"""

from __future__ import annotations

import os

import numpy as np

#: the bundled T4 lysozyme L99A files (``diffmd.data.t4_lysozyme``), located without importing the
#: ``diffmd`` package namespace from inside it
_T4L = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "t4-lysozyme-l99a")


def t4_lysozyme(part: str) -> tuple:
    return os.path.join(_T4L, f"{part}.prmtop"), os.path.join(_T4L, f"{part}.crd")


def write_t4_lysozyme_inputs(folder: str, *, ligand_hydrogens: bool = True) -> tuple:
    """Write ``folder/t4-l99a.pdb`` (receptor) and ``folder/p-xylene.sdf`` (ligand, 3D, bound pose).

    Args:
        folder: where to write (created).
        ligand_hydrogens: keep the ligand's hydrogens in the SDF (False writes heavy atoms only,
            as many docking outputs do).

    Returns:
        ``(pdb_path, sdf_path)``. Needs OpenMM and RDKit (the ``prepare`` extra).
    """
    from openmm import app
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    from ..io import load_amber

    os.makedirs(folder, exist_ok=True)
    prmtop, crd = t4_lysozyme("receptor")
    receptor = app.AmberPrmtopFile(prmtop)
    positions = app.AmberInpcrdFile(crd).getPositions()
    pdb_path = os.path.join(folder, "t4-l99a.pdb")
    with open(pdb_path, "w") as fh:
        app.PDBFile.writeFile(receptor.topology, positions, fh)
    ligand = load_amber(*t4_lysozyme("ligand"))
    top = ligand.topology
    xyz = np.asarray(ligand.positions, np.float64) * 10.0  # nm -> Angstrom
    mol = Chem.RWMol()
    for z in top.elements:
        mol.AddAtom(Chem.Atom(int(z)))
    for i, j in top.bonds:
        mol.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    conf = Chem.Conformer(mol.GetNumAtoms())
    for k, p in enumerate(xyz):
        conf.SetAtomPosition(k, Point3D(*map(float, p)))
    conf.Set3D(True)
    mol.AddConformer(conf, assignId=True)
    mol = mol.GetMol()
    rdDetermineBonds.DetermineBondOrders(mol, charge=0)
    if not ligand_hydrogens:
        mol = Chem.RemoveHs(mol)
    mol.SetProp("_Name", "p-xylene")
    sdf_path = os.path.join(folder, "p-xylene.sdf")
    writer = Chem.SDWriter(sdf_path)
    writer.write(mol)
    writer.close()
    return pdb_path, sdf_path
