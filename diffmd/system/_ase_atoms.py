"""A ``System`` as ``ase.Atoms`` (ASE works in Angstrom; conversions with ``kernels.constants``)."""

from __future__ import annotations

import numpy as np

from ..kernels.constants import ANGSTROM
from ..kernels.errors import InputError


def system_to_ase(system, positions=None):
    """``ase.Atoms`` of a diffmd ``System``: elements, masses [amu], positions [A], and the box as the
    cell [A] with ``pbc=True`` when the system has one (else no cell, ``pbc=False``).

    Args:
        system: a ``diffmd.System``.
        positions: (N, 3) [nm]; default the system's.
    """
    from ase import Atoms

    pos = system.positions if positions is None else positions
    if pos is None:
        raise InputError(f"{system.source or 'the system'} has no positions: pass positions= [nm]")
    z = np.asarray(system.topology.elements)
    if np.any(z <= 0):
        raise InputError(f"{system.source or 'the system'} has atoms without an element (virtual sites); ASE "
                         "needs an element per atom")
    kw = {}
    if system.box is not None:
        kw = {"cell": np.asarray(system.box, np.float64) / ANGSTROM, "pbc": True}
    return Atoms(numbers=z, positions=np.asarray(pos, np.float64) / ANGSTROM, masses=np.asarray(system.masses), **kw)
