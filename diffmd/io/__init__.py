"""Files in and out: readers that build Systems, trajectory and structure formats, reporters, checkpoints.

Owns the Amber prmtop/coordinate readers and ``load_amber``, OpenMM System import
(``from_openmm``, ``load_openmm``), PDB, DCD and extended XYZ (ASE units on disk, nm/kJ/mol in
memory), the reporters the runners call between chunks (``StateDataReporter``, ``DCDReporter``,
``ExtXYZReporter``, ``FramesReporter`` (positions kept in
memory), ``ProgressReporter``, ``CheckpointReporter``) and orbax checkpoints.
Conversions between file units and diffmd's (nm, ps, kJ/mol, e) happen here only.
"""

from ._amber import load_amber_arrays, system_arrays
from ._checkpoint import find_checkpoint, read_checkpoint_metadata, restore_checkpoint, save_checkpoint
from ._coords import Coordinates, box_from_lengths_angles, read_coordinates
from ._dcd import DCDWriter, read_dcd
from ._kinds import file_kind, wrong_kind
from ._load import from_openmm, load_amber, load_openmm
from ._openmm import from_openmm_arrays
from ._openmm_xml import OpenMMFiles, read_openmm_files, read_system_xml
from ._pdb import format_pdb, read_pdb_atoms, write_pdb
from ._prmtop import Prmtop, read_prmtop
from ._reporters import (
    PERIODIC_COLUMNS,
    STATE_COLUMNS,
    CheckpointReporter,
    DCDReporter,
    ExtXYZReporter,
    FramesReporter,
    ProgressReporter,
    Reporter,
    RunInfo,
    Snapshot,
    StateDataReporter,
    check_finite,
    dispatch,
)
from ._xyz import XYZFrame, format_extxyz, read_extxyz, symbols_of, truncate_extxyz, write_extxyz

__all__ = [
    "load_amber_arrays",
    "system_arrays",
    "find_checkpoint",
    "read_checkpoint_metadata",
    "restore_checkpoint",
    "save_checkpoint",
    "Coordinates",
    "box_from_lengths_angles",
    "read_coordinates",
    "DCDWriter",
    "read_dcd",
    "file_kind",
    "wrong_kind",
    "from_openmm",
    "load_amber",
    "load_openmm",
    "from_openmm_arrays",
    "OpenMMFiles",
    "read_openmm_files",
    "read_system_xml",
    "format_pdb",
    "read_pdb_atoms",
    "write_pdb",
    "Prmtop",
    "read_prmtop",
    "PERIODIC_COLUMNS",
    "STATE_COLUMNS",
    "CheckpointReporter",
    "DCDReporter",
    "ExtXYZReporter",
    "FramesReporter",
    "ProgressReporter",
    "Reporter",
    "RunInfo",
    "Snapshot",
    "StateDataReporter",
    "check_finite",
    "dispatch",
    "XYZFrame",
    "format_extxyz",
    "read_extxyz",
    "symbols_of",
    "truncate_extxyz",
    "write_extxyz",
]
