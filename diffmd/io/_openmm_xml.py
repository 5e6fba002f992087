"""OpenMM's files: a serialized ``System`` (``XmlSerializer``) with positions from a PDB or a
serialized ``State``.

    system.xml   <System ...>   openmm.XmlSerializer.serialize(system)
    state.xml    <State ...>    XmlSerializer.serialize(context.getState(getPositions=True,
                                getVelocities=True))  (positions, box, velocities)
    model.pdb    ATOM/HETATM    positions (and CRYST1 box), atom names and residues
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from ..kernels.errors import InputError
from ._kinds import DESCRIPTIONS, file_kind


class OpenMMFiles(NamedTuple):
    """What ``read_openmm_files`` read: the ``openmm.System``, positions (N, 3) [nm], box
    (3, 3) [nm] or None, velocities (N, 3) [nm/ps] or None, and an ``openmm.app.Topology``
    (from a PDB) or None."""

    system: object
    positions: np.ndarray | None
    box: np.ndarray | None
    velocities: np.ndarray | None
    topology: object


def read_system_xml(path):
    """The ``openmm.System`` serialized in ``path``."""
    import openmm

    kind = file_kind(path)
    if kind != "openmm-system":
        raise InputError(f"{path}: not a serialized OpenMM System (it is {DESCRIPTIONS[kind]}); write one with "
                         "open('system.xml', 'w').write(openmm.XmlSerializer.serialize(system))")
    with open(path) as fh:
        text = fh.read()
    try:
        system = openmm.XmlSerializer.deserialize(text)
    except Exception as exc:  # noqa: BLE001 - OpenMM raises plain Exception on malformed XML
        raise InputError(f"{path}: OpenMM cannot read this System XML: {exc}") from None
    if not isinstance(system, openmm.System):
        raise InputError(f"{path}: holds a {type(system).__name__}, not an OpenMM System")
    return system


def read_openmm_files(system_xml, positions_file=None) -> OpenMMFiles:
    """Read a serialized System and, optionally, a PDB or serialized State with its positions.

    Raises:
        InputError: a file of the wrong kind, malformed, or with another atom count than
            the System (messages name the file and the fix).
    """
    system = read_system_xml(system_xml)
    if positions_file is None:
        return OpenMMFiles(system, None, None, None, None)
    n = system.getNumParticles()
    kind = file_kind(positions_file)
    if kind == "pdb":
        positions, box, velocities, topology = _read_pdb(positions_file)
    elif kind == "openmm-state":
        positions, box, velocities = _read_state(positions_file)
        topology = None
    else:
        raise InputError(f"{positions_file}: positions for an OpenMM System must be a PDB or a serialized State "
                         f"(XmlSerializer.serialize(context.getState(getPositions=True))), found {DESCRIPTIONS[kind]}")
    if positions.shape != (n, 3):
        raise InputError(f"{positions_file} has {positions.shape[0]} atoms but {system_xml} has {n} particles; "
                         "give the positions of this System (virtual sites included)")
    return OpenMMFiles(system, positions, box, velocities, topology)


def _read_pdb(path):
    from openmm import app, unit

    try:
        pdb = app.PDBFile(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - OpenMM's PDB reader raises assorted errors
        raise InputError(f"{path}: OpenMM cannot read this PDB: {exc}") from None
    positions = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer), float)
    vectors = pdb.topology.getPeriodicBoxVectors()
    box = None if vectors is None else np.array([v.value_in_unit(unit.nanometer) for v in vectors], float)
    return positions, box, None, pdb.topology


def _read_state(path):
    import openmm
    from openmm import unit

    with open(path) as fh:
        text = fh.read()
    try:
        state = openmm.XmlSerializer.deserialize(text)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: OpenMM cannot read this State XML: {exc}") from None
    try:
        positions = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer), float)
    except Exception:  # noqa: BLE001 - OpenMM raises when the State holds no positions
        raise InputError(f"{path}: the State holds no positions; serialize "
                         "context.getState(getPositions=True)") from None
    try:
        velocities = np.asarray(state.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond),
                                float)
    except Exception:  # noqa: BLE001 - no velocities in this State
        velocities = None
    box = np.array([v.value_in_unit(unit.nanometer) for v in state.getPeriodicBoxVectors()], float)
    return positions, box, velocities
