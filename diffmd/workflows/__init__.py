"""Protein-ligand workflows: preparation from PDB + SDF, and pose/pocket/interaction analysis."""

from ._analysis import COLUMNS as ANALYSIS_COLUMNS
from ._analysis import analyse as analyse
from ._analysis import analyse_run as analyse_run
from ._analysis import ligand_for_run as ligand_for_run
from ._analysis import read_analysis as read_analysis
from ._analysis import write_analysis as write_analysis
from ._contacts import contacts as contacts
from ._contacts import hydrogen_bonds as hydrogen_bonds
from ._demo_inputs import write_t4_lysozyme_inputs as write_t4_lysozyme_inputs
from ._deps import INSTALL_HINT as INSTALL_HINT
from ._deps import MissingExtraError as MissingExtraError
from ._deps import missing_requirements as missing_requirements
from ._interaction_frames import interaction_energies as interaction_energies
from ._interaction_frames import subset_system as subset_system
from ._pose import alignment_atoms as alignment_atoms
from ._pose import ligand_atoms as ligand_atoms
from ._pose import ligand_displacement as ligand_displacement
from ._pose import ligand_rmsd as ligand_rmsd
from ._pose import pocket_residues as pocket_residues
from ._pose import receptor_atoms as receptor_atoms
from ._pose import rmsf as rmsf
from ._pose import superpose as superpose
from ._leap import PROTEIN_FORCE_FIELDS as PROTEIN_FORCE_FIELDS
from ._ligand import LIGAND_FORCE_FIELDS as LIGAND_FORCE_FIELDS
from ._prepare import DEFAULT_IONIC_STRENGTH as DEFAULT_IONIC_STRENGTH
from ._prepare import DEFAULT_PADDING_NM as DEFAULT_PADDING_NM
from ._prepare import SOLVENTS as SOLVENTS
from ._pose_dataset import LABEL_COLUMNS as LABEL_COLUMNS
from ._pose_dataset import pose_dataset as pose_dataset
from ._prepare import PreparedComplex as PreparedComplex
from ._prepare import prepare as prepare

__all__ = [
    "ANALYSIS_COLUMNS",
    "analyse",
    "analyse_run",
    "ligand_for_run",
    "read_analysis",
    "write_analysis",
    "contacts",
    "hydrogen_bonds",
    "write_t4_lysozyme_inputs",
    "INSTALL_HINT",
    "MissingExtraError",
    "missing_requirements",
    "interaction_energies",
    "subset_system",
    "alignment_atoms",
    "ligand_atoms",
    "ligand_displacement",
    "ligand_rmsd",
    "pocket_residues",
    "receptor_atoms",
    "rmsf",
    "superpose",
    "PROTEIN_FORCE_FIELDS",
    "LIGAND_FORCE_FIELDS",
    "DEFAULT_IONIC_STRENGTH",
    "DEFAULT_PADDING_NM",
    "SOLVENTS",
    "LABEL_COLUMNS",
    "pose_dataset",
    "PreparedComplex",
    "prepare",
]
