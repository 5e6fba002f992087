"""OpenMM inputs on the command line: ``diffmd energy|run SYSTEM.xml POSITIONS``.

The first file may be an Amber prmtop or an OpenMM System serialized by ``XmlSerializer``
(told apart by content); with a System, POSITIONS is a PDB or a serialized ``State``
(positions, box, velocities). A System fixes its own physics (nonbonded method and
cutoff, implicit solvent, constraints, virtual sites, masses), so the flags that would
change it are errors that name the flag; run settings (steps, time step, temperature,
friction, precision, outputs) apply as usual.
"""

from __future__ import annotations

import os

from ..io import file_kind, load_amber, load_openmm
from ..kernels.errors import InputError

#: flags that choose physics an OpenMM System already fixes: (flag, argparse attribute, value when not given)
PHYSICS_FLAGS = (("--nonbonded", "nonbonded", None), ("--cutoff", "cutoff", None),
                 ("--implicit-solvent", "implicit_solvent", None), ("--constraints", "constraints", None),
                 ("--flexible-water", "flexible_water", False), ("--hmr", "hmr", None))


def is_openmm_system(path) -> bool:
    """Whether ``path`` holds a serialized OpenMM System (judged by content; False for a path
    that is not a readable file, which the loaders then report)."""
    return path is not None and os.path.isfile(path) and file_kind(path) == "openmm-system"


def load_input(path, coords):
    """The ``System`` of ``diffmd energy``/``run``'s two files: a prmtop and its coordinates, or
    an OpenMM System XML and a PDB or State XML.

    Raises:
        InputError: a file of the wrong kind (named with what is expected).
    """
    kind = file_kind(path)
    if kind == "openmm-system":
        return load_openmm(path, coords)
    if kind in ("openmm-state", "pdb", "xml"):
        what = {"openmm-state": "an OpenMM State XML", "pdb": "a PDB", "xml": "an XML file"}[kind]
        raise InputError(f"{path} is {what}, not a topology: give an Amber prmtop with its coordinates, or an OpenMM "
                         "System XML (XmlSerializer.serialize(system)) with a PDB or State XML, in that order")
    return load_amber(path, coords)


def reject_physics_flags(args, path, flags=PHYSICS_FLAGS) -> None:
    """Raise ``InputError`` naming every flag in ``flags`` that was given for an OpenMM System."""
    given = [flag for flag, attr, unset in flags if getattr(args, attr, unset) != unset]
    if given:
        raise InputError(
            f"{', '.join(given)}: {path} is an OpenMM System, which fixes its own nonbonded method and cutoff, "
            "implicit solvent, constraints, virtual sites and masses; drop the flag(s), or build the System with the "
            "settings you want (createSystem's nonbondedMethod=, nonbondedCutoff=, implicitSolvent=, constraints=, "
            "rigidWater=, hydrogenMass=) and serialize it again")


def openmm_run_settings(args, kw: dict) -> dict:
    """``simulate`` keywords for an OpenMM System: the physics flags checked (none may be given)
    and the physics keywords left to the System."""
    reject_physics_flags(args, args.prmtop)
    if args.replicas > 1 or args.batch:
        raise InputError("--replicas and --batch take Amber inputs (PRMTOP COORDS); run an OpenMM System one "
                         "member at a time, or use diffmd.ensemble.prepare(diffmd.load_openmm(...), replicas=R)")
    return {**kw, "constraints": None, "rigid_water": None, "hydrogen_mass": None, "nonbonded": None,
            "cutoff": None, "implicit_solvent": None}
