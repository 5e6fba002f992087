"""File formats: Amber topologies and coordinates, OpenMM systems, trajectories."""

from . import _coords, _prmtop  # noqa: F401
