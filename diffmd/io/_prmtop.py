"""Reader for Amber parameter/topology files (prmtop, Amber 7 format and later).

The file is a sequence of ``%FLAG NAME`` sections, each with a Fortran
``%FORMAT(...)`` line and fixed-width fields. This module only tokenises: it
returns the raw sections as numpy arrays or string lists, checking counts
against POINTERS, and leaves units and meaning to ``_amber.py``.
"""

from __future__ import annotations

import os
import re

import numpy as np

from ..kernels.errors import InputError
from ._kinds import file_kind, wrong_kind

# %FORMAT(10I8), (5E16.8), (20a4), (8(F9.5)) (CMAP grids); mixed formats such as
# (i2,a78) (chamber's FORCE_FIELD_TYPE) are kept as whole lines
_FORMAT = re.compile(r"%FORMAT\((\d*)\(?([aAiIeEfF])(\d+)(?:\.\d+)?\)?\)$")

# POINTERS entries by position (Amber file-format specification)
POINTER_NAMES = (
    "NATOM NTYPES NBONH MBONA NTHETH MTHETA NPHIH MPHIA NHPARM NPARM NNB NRES NBONA NTHETA NPHIA "
    "NUMBND NUMANG NPTRA NATYP NPHB IFPERT NBPER NGPER NDPER MBPER MGPER MDPER IFBOX NMXRS IFCAP "
    "NUMEXTRA NCOPY"
).split()


class Prmtop:
    """Raw sections of a prmtop file.

    Attributes:
        path: the file read.
        sections: flag name -> numpy array (numbers) or list of str (labels).
        pointers: POINTERS entries by name (``NATOM``, ``NTYPES``, ...).
    """

    def __init__(self, path: str, sections: dict):
        self.path = path
        self.sections = sections
        if "POINTERS" not in sections:
            raise InputError(f"{path}: missing %FLAG POINTERS section: not a complete prmtop file")
        ptr = np.asarray(sections["POINTERS"], dtype=np.int64)
        if len(ptr) < 28:
            raise InputError(f"{path}: %FLAG POINTERS has {len(ptr)} entries, expected at least 28 (truncated file?)")
        self.pointers = {name: int(v) for name, v in zip(POINTER_NAMES, ptr)}

    def has(self, flag: str) -> bool:
        return flag in self.sections

    def get(self, flag: str, expected: int | None = None):
        """A section, checked for presence and (optionally) length.

        Raises:
            InputError: naming the file, the flag and the fix.
        """
        if flag not in self.sections:
            raise InputError(f"{self.path}: missing %FLAG {flag}; the prmtop is incomplete or not from tleap/parmed")
        value = self.sections[flag]
        if expected is not None and len(value) != expected:
            raise InputError(
                f"{self.path}: %FLAG {flag} has {len(value)} entries but POINTERS implies {expected} "
                "(truncated or hand-edited file?)"
            )
        return value


def read_prmtop(path: str | os.PathLike) -> Prmtop:
    """Tokenise a prmtop file into its sections.

    Raises:
        InputError: unreadable file, pre-Amber-7 format (no %FLAG lines),
            missing %FORMAT, or fields that do not parse as numbers.
    """
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise InputError(f"cannot read prmtop {path!r}: {exc.strerror}") from exc
    if not any(line.startswith("%FLAG") for line in lines[:50]):
        kind = file_kind(path, "prmtop")
        if kind == "prmtop-old":
            raise InputError(
                f"{path}: no %FLAG lines: this is a pre-Amber-7 (old-format) prmtop, which diffmd does not read; "
                "convert it with ParmEd or re-create it with tleap"
            )
        raise wrong_kind(path, kind, "prmtop")
    sections: dict = {}
    flag = None
    fmt = None
    body: list[str] = []

    def finish():
        if flag is None:
            return
        if fmt is None:
            raise InputError(f"{path}: %FLAG {flag} has no %FORMAT line")
        sections[flag] = _parse_fields(path, flag, fmt, body)

    for line in lines:
        if line.startswith("%FLAG"):
            finish()
            flag = line[5:].strip()
            fmt, body = None, []
        elif line.startswith("%FORMAT"):
            compact = line.strip().replace(" ", "")
            m = _FORMAT.match(compact)
            if m is not None:
                fmt = (m.group(2).lower(), int(m.group(3)))
            elif "," in compact:
                fmt = ("line", 0)
            else:
                raise InputError(f"{path}: cannot understand {line.strip()!r} for %FLAG {flag}")
        elif line.startswith("%COMMENT") or line.startswith("%VERSION"):
            continue
        elif flag is not None:
            body.append(line)
    finish()
    return Prmtop(path, sections)


def _parse_fields(path, flag, fmt, body):
    kind, width = fmt
    if kind == "line":
        return [line.rstrip() for line in body]
    fields = []
    for line in body:
        line = line.rstrip("\n")
        for start in range(0, len(line), width):
            chunk = line[start:start + width]
            if kind == "a":
                fields.append(chunk.strip())
            elif chunk.strip():
                fields.append(chunk)
    if kind == "a":
        return fields
    try:
        if kind == "i":
            return np.array([int(f) for f in fields], dtype=np.int64)
        return np.array([float(f.replace("D", "E")) for f in fields], dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{path}: %FLAG {flag} holds a field that is not a number ({exc})") from exc
