"""Systems from files and OpenMM objects: ``load_amber``, ``from_openmm``, ``load_openmm``.

Each reads its input with the format readers of this package (positions [nm],
velocities [nm/ps], box [nm]) and returns a ``diffmd.system.System``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..kernels.geometry import reduce_box
from ..system import System, checked_positions
from ._amber import load_amber_arrays
from ._openmm import from_openmm_arrays
from ._openmm_xml import read_openmm_files


def load_amber(prmtop, coordinates=None) -> System:
    """Load an Amber system.

    Args:
        prmtop: path to an Amber 7+ prmtop/parm7 file (tleap, ParmEd).
        coordinates: optional inpcrd/rst7/crd (ASCII), NetCDF restart or PDB file (kind
            judged by content; a PDB's ATOM/HETATM records in file order, its first MODEL,
            the box from CRYST1). When it has a box, that box is used (as OpenMM does),
            else the prmtop's.

    Returns:
        A ``System`` with positions [nm], velocities [nm/ps] (if the file has
        them) and box [nm].

    Raises:
        InputError: malformed or truncated files, missing flags, atom-count
            mismatch, NaN coordinates (the message names the file and flag, or the
            atom), files of the wrong kind (swapped prmtop and coordinates).

    Example:
        >>> import diffmd
        >>> system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
        >>> params, energy_fn = system.energy_fn()
    """
    params, terms, topology, masses, box, positions, velocities = load_amber_arrays(prmtop, coordinates)
    return System(topology=topology, masses=masses, params=params, terms=terms, positions=positions,
                  velocities=velocities, box=box, source=str(prmtop))


def from_openmm(system, positions=None, topology=None) -> System:
    """Convert an ``openmm.System`` (with optional positions [nm] or Quantity and
    ``openmm.app.Topology``) into a diffmd ``System`` with the physics it defines.

    Read: HarmonicBondForce, HarmonicAngleForce, PeriodicTorsionForce, CMAPTorsionForce,
    NonbondedForce (scaled 1-4 exceptions; NoCutoff, CutoffNonPeriodic, CutoffPeriodic or
    PME with the System's cutoff, reaction-field dielectric, Ewald tolerance or PME
    parameters, dispersion correction), GBSAOBCForce and the CustomGBForce that OpenMM's
    ``implicit/obc2.xml``, ``obc1.xml`` and ``hct.xml`` build, the System's constraints
    (rigid three-site waters by SETTLE, the rest by SHAKE/RATTLE) and its virtual sites
    (all four OpenMM kinds, placed after every constraint step, forces spread onto their
    parents). CMMotionRemover is dropped (diffmd's thermostats remove centre-of-mass
    motion). ``energy_fn()`` then reproduces the System's energy and ``simulate()`` uses
    its constraints; the result's ``physics`` holds these settings.

    Raises:
        UnsupportedError: one message listing every force or feature of the System
            diffmd does not model.
        InputError: positions or topology that do not fit the System.

    Example:
        >>> import diffmd
        >>> from openmm import app
        >>> prmtop, crd = diffmd.data.alanine_dipeptide()
        >>> omm = app.AmberPrmtopFile(prmtop).createSystem(constraints=app.HBonds)
        >>> system = diffmd.from_openmm(omm, app.AmberInpcrdFile(crd).getPositions())
        >>> len(system.physics.constraint_pairs)
        12
    """
    imported = from_openmm_arrays(system, positions, topology)
    positions = imported.positions
    if positions is not None:
        positions = checked_positions(positions, imported.topology.n_atoms, "from_openmm")
    return System(topology=imported.topology, masses=imported.masses, params=imported.params, terms=imported.terms,
                  positions=positions, box=imported.box, source="openmm.System", physics=imported.physics)


def load_openmm(system_xml, positions=None) -> System:
    """Load an OpenMM System serialized with ``openmm.XmlSerializer`` (and its positions).

    Args:
        system_xml: path of the System XML (``XmlSerializer.serialize(system)``).
        positions: optional path of a PDB (positions, CRYST1 box, atom names and residues)
            or of a serialized ``State`` (``XmlSerializer.serialize(context.getState(
            getPositions=True, getVelocities=True))``: positions, box and velocities).
            Files are told apart by their content. A periodic System takes the file's
            box (a PDB without CRYST1 leaves the System's default box).

    Returns:
        A ``System`` as ``from_openmm`` makes it, with ``source`` naming the files.

    Raises:
        InputError: a file of the wrong kind, malformed, or of another atom count.
        UnsupportedError: forces diffmd does not model (all listed).

    Example:
        >>> system = diffmd.load_openmm("system.xml", "state.xml")      # doctest: +SKIP
        >>> params, energy_fn = system.energy_fn()                        # doctest: +SKIP
    """
    files = read_openmm_files(system_xml, positions)
    out = from_openmm(files.system, files.positions, files.topology)
    source = str(system_xml) if positions is None else f"{system_xml} + {positions}"
    box = out.box
    if box is not None and files.box is not None:
        box = reduce_box(files.box)
    velocities = None
    if files.velocities is not None:
        velocities = np.where((out.masses > 0)[:, None], files.velocities, 0.0)
    return dataclasses.replace(out, box=box, velocities=velocities, source=source)
