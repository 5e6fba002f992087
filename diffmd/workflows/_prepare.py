"""``diffmd.prepare``: from a protein PDB and a ligand SDF to Amber files diffmd runs directly.

Writes into ``out``::

    complex.prmtop  complex.inpcrd   the protein-ligand complex (with water and ions for TIP3P)
    receptor.prmtop receptor.inpcrd  the protein alone (no water)
    ligand.prmtop   ligand.inpcrd    the ligand alone (no water)
    complex.pdb                      the complex as tleap built it (Amber names)
    prepare.json                     every choice, fix, count and tool version
    build/                           intermediate files and logs (ligand.mol2, ligand.frcmod, tleap.log)

The receptor comes first in the complex and the ligand (residue ``LIG`` by default) right after it,
so ``diffmd.interaction_energy(complex, receptor, ligand)`` pairs them with its defaults.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os

import numpy as np

from ..kernels.errors import InputError
from ._deps import require_prepare_extra, tool_versions
from ._leap import (
    PROTEIN_FORCE_FIELDS,
    added_waters,
    dry_script,
    net_charge,
    run_tleap,
    salt_pairs,
    solvated_script,
)
from ._ligand import (
    LIGAND_FORCE_FIELDS,
    ligand_positions_nm,
    parameterise_ligand,
    read_ligand,
)
from ._protein import fix_protein, write_leap_pdb

SOLVENTS = ("obc2", "tip3p")
#: heavy-atom distance [nm] between ligand and protein below which the ligand overlaps the protein
#: (shorter than any non-bonded contact; real contacts start near 0.27 nm)
OVERLAP_NM = 0.15
DEFAULT_PADDING_NM = 1.0
DEFAULT_IONIC_STRENGTH = 0.15


@dataclasses.dataclass(frozen=True)
class PreparedComplex:
    """What ``prepare`` wrote.

    Attributes:
        out: the output folder.
        record: the content of ``prepare.json``.
    """

    out: str
    record: dict

    def files(self, part: str = "complex") -> tuple:
        """``(prmtop, inpcrd)`` paths of ``part`` (``complex``, ``receptor`` or ``ligand``)."""
        if part not in ("complex", "receptor", "ligand"):
            raise InputError(f"part must be 'complex', 'receptor' or 'ligand', got {part!r}")
        return os.path.join(self.out, f"{part}.prmtop"), os.path.join(self.out, f"{part}.inpcrd")

    def load(self, part: str = "complex"):
        """The ``diffmd.System`` of ``part`` with its coordinates."""
        from ..io import load_amber

        return load_amber(*self.files(part))

    @property
    def ligand_atoms(self) -> np.ndarray:
        """0-based indices of the ligand's atoms in the complex."""
        return np.asarray(self.record["complex"]["ligand_atoms"])


def _sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _validate(solvent, padding, ionic_strength, protein_ff, ligand_ff, ligand_name):
    if solvent not in SOLVENTS:
        raise InputError(f"solvent must be one of {', '.join(SOLVENTS)}, got {solvent!r}")
    if protein_ff not in PROTEIN_FORCE_FIELDS:
        raise InputError(f"protein force field must be one of {', '.join(PROTEIN_FORCE_FIELDS)}, got {protein_ff!r}")
    if ligand_ff not in LIGAND_FORCE_FIELDS:
        raise InputError(f"ligand force field must be one of {', '.join(LIGAND_FORCE_FIELDS)}, got {ligand_ff!r}")
    if not (ligand_name.isalnum() and 1 <= len(ligand_name) <= 3 and ligand_name.upper() == ligand_name):
        raise InputError(f"ligand residue name must be 1-3 upper-case letters or digits, got {ligand_name!r}")
    if solvent == "obc2":
        for flag, value in (("padding", padding), ("ionic strength", ionic_strength)):
            if value is not None:
                raise InputError(f"{flag} applies to --solvent tip3p only (OBC2 implicit solvent has no box or ions)")
        return None, None
    padding = DEFAULT_PADDING_NM if padding is None else float(padding)
    ionic_strength = DEFAULT_IONIC_STRENGTH if ionic_strength is None else float(ionic_strength)
    if not padding > 0.0:
        raise InputError(f"padding must be > 0 nm, got {padding}")
    if ionic_strength < 0.0:
        raise InputError(f"ionic strength must be >= 0 mol/L, got {ionic_strength}")
    return padding, ionic_strength


def check_overlap(protein_residues, ligand_xyz_nm, ligand_elements, protein_file, ligand_file) -> float:
    """Smallest ligand-protein heavy-atom distance [nm]; raises if the ligand overlaps the protein."""
    protein = [(res[0], res[2], atom[0], atom[2]) for res in protein_residues for atom in res[3]]
    xyz = np.array([p[3] for p in protein])
    heavy = np.array([z != 1 for z in ligand_elements])
    lig = ligand_xyz_nm[heavy]
    d = np.linalg.norm(lig[:, None, :] - xyz[None, :, :], axis=-1)
    k = np.unravel_index(np.argmin(d), d.shape)
    dmin = float(d[k])
    if dmin < OVERLAP_NM:
        name, rid, atom, _ = protein[k[1]]
        raise InputError(f"{ligand_file}: the ligand overlaps the protein of {protein_file}: its heavy atom "
                         f"{int(np.flatnonzero(heavy)[k[0]])} (0-based) is {dmin * 10:.2f} A from {atom} of "
                         f"{name} {rid} (anything under {OVERLAP_NM * 10:.1f} A is a clash): the two files must be in "
                         "the same frame, with the ligand posed in the pocket (e.g. docked into this structure)")
    return dmin


def prepare(protein: str, ligand: str, out: str, *, solvent: str = "obc2", padding: float | None = None,
            ionic_strength: float | None = None, ligand_charge: int | None = None, protein_ff: str = "ff14SB",
            ligand_ff: str = "gaff2", ligand_name: str = "LIG", ph: float = 7.0) -> PreparedComplex:
    """Build an Amber-parameterised complex, receptor and ligand from a protein PDB and a ligand SDF.

    PDBFixer adds missing heavy atoms and internal missing residues, replaces modified residues by
    their parents and chooses protonation states at ``ph``; waters, ions and other molecules in the
    PDB are removed (listed in ``prepare.json``). RDKit reads the ligand (adding hydrogens the SDF
    lacks, with coordinates), antechamber gives AM1-BCC charges and GAFF2 types, parmchk2 the missing
    parameters, and tleap builds the files with the protein force field and, for OBC2, mbondi2 GB
    radii, or for TIP3P a rectangular water box neutralised with Na+/Cl- plus salt.

    Args:
        protein: protein PDB (or PDBx/mmCIF) file; the ligand's pose must be in its frame.
        ligand: SDF/MOL file with one molecule in 3D [Angstrom], hydrogens optional.
        out: output folder (created; existing files in it are replaced).
        solvent: ``obc2`` (implicit, run with ``implicit_solvent="obc2"``) or ``tip3p`` (explicit water box).
        padding: TIP3P only: minimum distance from the solute to the box edge [nm] (default 1.0).
        ionic_strength: TIP3P only: NaCl added beyond neutralisation [mol/L] (default 0.15).
        ligand_charge: net ligand charge [e]; default: the SDF's formal charges (must agree if both).
        protein_ff: ``ff14SB`` or ``ff19SB``.
        ligand_ff: ``gaff2`` or ``gaff``.
        ligand_name: residue name of the ligand in the written files (``--ligand LIG`` finds it).
        ph: pH for the protein's protonation states.

    Returns:
        ``PreparedComplex`` (``.files(part)``, ``.load(part)``, ``.ligand_atoms``, ``.record``).

    Raises:
        MissingExtraError: the ``prepare`` extra is not installed (``pip install "diffmd[prepare]"``).
        InputError: bad input, naming the file and the problem.
    """
    padding, ionic_strength = _validate(solvent, padding, ionic_strength, protein_ff, ligand_ff, ligand_name)
    programs = require_prepare_extra()
    mol, charge, ligand_notes = read_ligand(ligand, ligand_charge)
    residues, protein_notes = fix_protein(protein, ph)
    elements = [a.GetAtomicNum() for a in mol.GetAtoms()]
    min_distance = check_overlap(residues, ligand_positions_nm(mol), elements, protein, ligand)
    out = os.path.abspath(out)
    build = os.path.join(out, "build")
    os.makedirs(build, exist_ok=True)
    write_leap_pdb(residues, os.path.join(build, "receptor_leap.pdb"))
    lig = parameterise_ligand(mol, charge, build, programs, atom_types=ligand_ff, residue_name=ligand_name,
                              source=ligand)
    disulfides = protein_notes.pop("_disulfide_leap_residues")
    log = run_tleap(programs["tleap"], dry_script(protein_ff, ligand_ff, solvent, disulfides, out), build, protein)
    complex_charge = net_charge(log)
    solvent_notes = {"model": solvent}
    if solvent == "obc2":
        solvent_notes["gb_radii"] = "mbondi2"
    else:
        probe = run_tleap(programs["tleap"], solvated_script(protein_ff, ligand_ff, disulfides, out, padding, None),
                          build, protein)
        n_waters = added_waters(probe)
        pairs = salt_pairs(ionic_strength, n_waters)
        run_tleap(programs["tleap"], solvated_script(protein_ff, ligand_ff, disulfides, out, padding, pairs),
                  build, protein)
        solvent_notes.update(padding_nm=padding, ionic_strength_molar=ionic_strength, box="rectangular",
                             waters_before_ions=n_waters, salt_pairs=pairs,
                             neutralising_ions=f"{abs(round(complex_charge))} "
                                               f"{'Cl-' if complex_charge > 0 else 'Na+'}" if round(complex_charge)
                             else "none")
    record = _record(out, protein, ligand, protein_notes, ligand_notes, lig, charge, complex_charge, solvent_notes,
                     {"solvent": solvent, "padding_nm": padding, "ionic_strength_molar": ionic_strength,
                      "ligand_charge": ligand_charge, "protein_ff": protein_ff, "ligand_ff": ligand_ff,
                      "ligand_name": ligand_name, "ph": ph}, min_distance)
    with open(os.path.join(out, "prepare.json"), "w") as fh:
        json.dump(record, fh, indent=2)
        fh.write("\n")
    return PreparedComplex(out=out, record=record)


def _record(out, protein, ligand, protein_notes, ligand_notes, lig, charge, complex_charge, solvent_notes,
            options, min_distance) -> dict:
    from ..io import load_amber

    system = load_amber(os.path.join(out, "complex.prmtop"), os.path.join(out, "complex.inpcrd"))
    top = system.topology
    name = options["ligand_name"]
    lig_res = [r for r, n in enumerate(top.residue_names) if n.strip() == name]
    ligand_atoms = np.flatnonzero(np.isin(top.residue_index, lig_res)).tolist()
    n_receptor = load_amber(os.path.join(out, "receptor.prmtop"), os.path.join(out, "receptor.inpcrd")).n_atoms
    return {
        "format": "diffmd-prepare", "version": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {"protein": os.path.abspath(protein), "protein_sha256": _sha256(protein),
                   "ligand": os.path.abspath(ligand), "ligand_sha256": _sha256(ligand)},
        "options": options,
        "protein": protein_notes,
        "ligand": {**ligand_notes, "net_charge": charge, "charges": "AM1-BCC (antechamber/sqm)",
                   "atom_types": options["ligand_ff"], "residue_name": name, "commands": lig["commands"],
                   "min_heavy_atom_distance_to_protein_nm": round(min_distance, 4)},
        "solvent": solvent_notes,
        "complex": {"n_atoms": system.n_atoms, "net_charge_before_ions": round(complex_charge, 4),
                    "receptor_atom_range": [0, n_receptor], "ligand_atoms": ligand_atoms,
                    "box_nm": None if system.box is None else np.asarray(system.box).round(5).tolist()},
        "run_hint": _run_hint(options["solvent"], name),
        "files": {"complex": ["complex.prmtop", "complex.inpcrd"], "receptor": ["receptor.prmtop", "receptor.inpcrd"],
                  "ligand": ["ligand.prmtop", "ligand.inpcrd"], "pdb": "complex.pdb", "build": "build/"},
        "tool_versions": tool_versions(),
    }


def _run_hint(solvent: str, name: str) -> str:
    physics = "--implicit-solvent obc2 --nonbonded cutoff" if solvent == "obc2" else "--nonbonded pme"
    return (f"diffmd run complex.prmtop complex.inpcrd {physics} --minimize --ligand {name}")
