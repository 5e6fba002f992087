"""The ligand half of ``prepare``: read one molecule from an SDF, check it, add hydrogens, and
parameterise it with antechamber (AM1-BCC charges, GAFF2 atom types) and parmchk2.

Coordinates stay where the SDF puts them (the pose is the user's), in Angstrom in the files
AmberTools reads and writes and in nm in what this module returns.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np

from ..kernels.errors import InputError

#: GAFF flavours antechamber/parmchk2 know, as ``--ligand-ff`` names them
LIGAND_FORCE_FIELDS = ("gaff2", "gaff")


def read_ligand(path: str, ligand_charge: int | None = None):
    """One ligand from an SDF/MOL file, checked and with explicit hydrogens.

    Args:
        path: SDF or MOL file with exactly one molecule and 3D coordinates [Angstrom].
        ligand_charge: net charge [e] to use; default: the sum of the SDF's formal charges.

    Returns:
        ``(mol, charge, notes)``: an RDKit molecule with hydrogens (3D conformer in Angstrom),
        the net charge [e] and a dict of what was done (hydrogens added, SMILES).

    Raises:
        InputError: no such file, no or several molecules, no 3D coordinates, charge that cannot
            be inferred (valences RDKit cannot read, unpaired electrons, a ``ligand_charge`` that
            contradicts the formal charges).
    """
    from rdkit import Chem

    if not os.path.isfile(path):
        raise InputError(f"{path}: no such ligand file (give an SDF with one molecule in its 3D pose)")
    try:
        records = list(Chem.SDMolSupplier(path, removeHs=False, sanitize=False))
    except OSError:  # RDKit refuses empty files outright
        records = []
    if len(records) == 0:
        raise InputError(f"{path}: no molecule found; give an SDF (MDL molfile) with one molecule in its 3D pose")
    if len(records) > 1:
        raise InputError(f"{path}: holds {len(records)} molecules; prepare takes one ligand per file (split the SDF, "
                         "e.g. one file per docked pose, and prepare each)")
    mol = records[0]
    if mol is None:
        raise InputError(f"{path}: RDKit cannot parse the molecule record (a malformed atom or bond block)")
    if mol.GetNumAtoms() == 0:
        raise InputError(f"{path}: the molecule has no atoms")
    xyz = mol.GetConformer().GetPositions() if mol.GetNumConformers() else np.zeros((0, 3))
    flat = len(xyz) == 0 or np.ptp(xyz[:, 2]) < 1e-4 or not mol.GetConformer().Is3D()
    if flat and mol.GetNumAtoms() > 3:
        raise InputError(f"{path}: the molecule has no 3D coordinates (its coordinate block is 2D: all z = 0 or "
                         "the header says 2D); prepare needs the ligand's 3D pose in the pocket, e.g. from docking "
                         "or a crystal structure")
    notes = {"file": os.path.abspath(path), "name": mol.GetProp("_Name") if mol.HasProp("_Name") else ""}
    try:
        sane = Chem.Mol(mol)
        Chem.SanitizeMol(sane)
    except Exception as exc:  # noqa: BLE001  RDKit raises its own types (AtomValenceException, KekulizeException, ...)
        if ligand_charge is None:
            raise InputError(f"{path}: the ligand's charge cannot be inferred: RDKit cannot read its valences "
                             f"({str(exc).strip()}); set the formal charges in the SDF (e.g. a charged N needs "
                             "CHG +1) or pass --ligand-charge Q (ligand_charge=) with all hydrogens present") from None
        # the user's charge with the molecule as written: antechamber perceives bonds and types itself
        notes.update(formal_charge=None, sanitized=False, hydrogens_added=0, smiles=None)
        return mol, int(ligand_charge), notes
    radicals = sum(a.GetNumRadicalElectrons() for a in sane.GetAtoms())
    if radicals:
        raise InputError(f"{path}: the ligand's charge cannot be inferred: {radicals} unpaired electron(s) as "
                         "written (an atom lacks bonds, hydrogens or its formal charge); fix the SDF's formal "
                         "charges and hydrogens (AM1-BCC needs a closed-shell molecule)")
    formal = Chem.GetFormalCharge(sane)
    if ligand_charge is not None and int(ligand_charge) != formal:
        raise InputError(f"{path}: --ligand-charge {ligand_charge} contradicts the SDF, whose formal charges sum to "
                         f"{formal} with its hydrogens; fix the SDF's formal charges and hydrogens (the protonation "
                         "state) or drop --ligand-charge")
    implicit = sum(a.GetNumImplicitHs() for a in sane.GetAtoms())
    with_h = Chem.AddHs(sane, addCoords=True) if implicit else sane
    notes.update(formal_charge=formal, sanitized=True, hydrogens_added=int(implicit),
                 smiles=Chem.MolToSmiles(Chem.RemoveHs(with_h)))
    return with_h, formal, notes


def ligand_positions_nm(mol) -> np.ndarray:
    """(n_atoms, 3) coordinates of the molecule's conformer [nm]."""
    return np.asarray(mol.GetConformer().GetPositions(), np.float64) * 0.1


def _run(cmd: list, cwd: str, what: str, source: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    log = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise InputError(f"{source}: {what} failed (exit status {proc.returncode}) running {' '.join(cmd)} in "
                         f"{cwd}:\n{tail}")
    return log


def parameterise_ligand(mol, charge: int, workdir: str, programs: dict, *, atom_types: str = "gaff2",
                        residue_name: str = "LIG", source: str = "ligand") -> dict:
    """AM1-BCC charges and GAFF/GAFF2 types (antechamber), missing parameters (parmchk2).

    Args:
        mol: RDKit molecule with all hydrogens and a 3D conformer [Angstrom].
        charge: net charge [e].
        workdir: folder for the intermediate files (kept: ``ligand.sdf``, ``ligand.mol2``,
            ``ligand.frcmod``).
        programs: ``{"antechamber": path, "parmchk2": path}``.
        atom_types: ``gaff2`` or ``gaff``.
        residue_name: residue name of the ligand (at most 4 characters for Amber files).
        source: the user's ligand file, named in errors.

    Returns:
        ``{"mol2": path, "frcmod": path, "commands": [...]}``.
    """
    from rdkit import Chem

    sdf = os.path.join(workdir, "ligand_input.sdf")
    writer = Chem.SDWriter(sdf)
    writer.SetKekulize(True)
    writer.write(mol)
    writer.close()
    mol2, frcmod = os.path.join(workdir, "ligand.mol2"), os.path.join(workdir, "ligand.frcmod")
    ante = [programs["antechamber"], "-i", "ligand_input.sdf", "-fi", "mdl", "-o", "ligand.mol2", "-fo", "mol2",
            "-c", "bcc", "-nc", str(int(charge)), "-at", atom_types, "-rn", residue_name, "-s", "0", "-pf", "y",
            "-dr", "no"]
    _run(ante, workdir, "antechamber (AM1-BCC charges, GAFF types)", source)
    parm = [programs["parmchk2"], "-i", "ligand.mol2", "-f", "mol2", "-o", "ligand.frcmod", "-s", atom_types]
    _run(parm, workdir, "parmchk2", source)
    for f in (mol2, frcmod):
        if not os.path.isfile(f):
            raise InputError(f"{source}: AmberTools wrote no {os.path.basename(f)} in {workdir}")
    return {"mol2": mol2, "frcmod": frcmod,
            "commands": [" ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(cmd))
                         for cmd in (ante, parm)]}
