"""What kind of file a path holds, judged by its content (extensions are often wrong or missing).

Used by the readers to refuse a file of the wrong kind with a message that says what the file
looks like and which kinds the argument accepts (for example prmtop and coordinates given the
wrong way round).
"""

from __future__ import annotations

import os
import re

from ..kernels.errors import InputError

#: what ``load_amber``'s first argument (the CLI's PRMTOP) accepts
PRMTOP_KINDS = "an Amber prmtop/parm7 file (Amber 7+ format, as tleap and ParmEd write it)"
#: what ``load_amber``'s second argument (the CLI's COORDS) accepts
COORDINATE_KINDS = ("an Amber inpcrd/rst7/crd (ASCII), an Amber NetCDF restart or trajectory (.nc, .ncrst), "
                    "or a PDB file (ATOM/HETATM records)")
#: the kinds ``file_kind`` returns, described for messages
DESCRIPTIONS = {
    "prmtop": "an Amber prmtop (topology and force field)",
    "prmtop-old": "a pre-Amber-7 (old-format) prmtop",
    "amber-ascii": "an Amber ASCII coordinate file (inpcrd/rst7/crd)",
    "netcdf": "a NetCDF file (Amber restart or trajectory)",
    "hdf5": "an HDF5/NetCDF-4 file",
    "pdb": "a PDB file",
    "openmm-system": "a serialized OpenMM System (XmlSerializer)",
    "openmm-state": "a serialized OpenMM State (XmlSerializer)",
    "xml": "an XML file (not an OpenMM System or State)",
    "unknown": "a file of unknown kind",
}
# record names that open a PDB file (wwPDB format 3.3, title and coordinate sections)
_PDB_RECORDS = frozenset(
    "HEADER OBSLTE TITLE SPLIT CAVEAT COMPND SOURCE KEYWDS EXPDTA NUMMDL MDLTYP AUTHOR REVDAT SPRSDE JRNL "
    "REMARK DBREF SEQADV SEQRES MODRES HET HETNAM HETSYN FORMUL HELIX SHEET SSBOND LINK CISPEP SITE CRYST1 "
    "ORIGX1 SCALE1 MTRIX1 MODEL ATOM HETATM".split())
_HEAD_BYTES = 1 << 16
_XML_ROOT = re.compile(r"<\s*([A-Za-z_][\w.-]*)")


def _is_number(text: str, kind=int) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def file_kind(path: str | os.PathLike, what: str = "file") -> str:
    """The kind of file at ``path``, from its first bytes and lines (``what`` names it in errors).

    Returns:
        One of the keys of ``DESCRIPTIONS``: ``"prmtop"`` (``%FLAG``/``%VERSION`` lines),
        ``"prmtop-old"`` (title, then lines of 12 integers), ``"amber-ascii"`` (title, then a
        line holding the atom count and optionally the time and temperature), ``"netcdf"``, ``"hdf5"``,
        ``"pdb"`` (PDB record names), ``"openmm-system"`` / ``"openmm-state"`` (XML whose
        root element is ``System`` / ``State``, as OpenMM's ``XmlSerializer`` writes), another
        ``"xml"`` or ``"unknown"``.

    Raises:
        InputError: the file cannot be read (the message names it).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path!r}: {exc.strerror}") from exc
    if head[:3] == b"CDF":
        return "netcdf"
    if head[:4] == b"\x89HDF":
        return "hdf5"
    raw = head.decode("utf-8", errors="replace")
    text = raw.lstrip("\ufeff \t\r\n")  # for XML only: an Amber title line may be blank
    lines = raw.splitlines()
    if any(line.startswith(("%FLAG", "%VERSION")) for line in lines[:50]):
        return "prmtop"
    if text.startswith("<"):
        # the root element's name, after the XML declaration and comments
        match = _XML_ROOT.search(re.sub(r"<\?.*?\?>|<!--.*?-->", "", text, flags=re.S))
        return {"System": "openmm-system", "State": "openmm-state"}.get(match.group(1) if match else "", "xml")
    second = lines[1].split() if len(lines) > 1 else []
    # inpcrd/rst7 line 2: the atom count, then the time [ps] (and the temperature of REMD restarts)
    if 1 <= len(second) <= 3 and _is_number(second[0]) and all(_is_number(t, float) for t in second[1:]):
        return "amber-ascii"
    if len(second) >= 10 and all(_is_number(t) for t in second):
        return "prmtop-old"
    first_record = next((line[:6].strip() for line in lines if line.strip()), "")
    if first_record in _PDB_RECORDS or any(line.startswith(("ATOM  ", "HETATM")) for line in lines):
        return "pdb"
    return "unknown"


def wrong_kind(path: str, kind: str, argument: str) -> InputError:
    """The error for a file of ``kind`` given as ``argument`` (``"prmtop"`` or ``"coordinates"``).

    The message says what the file looks like, what the argument accepts, and suspects
    swapped arguments when the file is what the other argument takes.
    """
    accepted = PRMTOP_KINDS if argument == "prmtop" else COORDINATE_KINDS
    other = "coordinates" if argument == "prmtop" else "prmtop"
    swapped = (kind == "prmtop") if argument == "coordinates" else (kind in ("amber-ascii", "netcdf", "pdb"))
    message = f"{path}: this is {DESCRIPTIONS.get(kind, kind)}, but the {argument} argument must be {accepted}"
    if swapped:
        message += (f". It is what the {other} argument takes: were the two swapped? The order is "
                    "load_amber(PRMTOP, COORDS) in Python and 'diffmd run|energy PRMTOP COORDS' on the command line")
    return InputError(message)
