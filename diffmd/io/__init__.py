"""File formats: Amber topologies and coordinates, OpenMM systems, trajectories."""
