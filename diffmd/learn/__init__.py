"""Learning from and through simulation: datasets, training, trajectory gradients, reweighting.

Owns four namespaces, each also reachable from ``diffmd``: ``datasets`` (frames with energies
[kJ/mol] and forces [kJ/mol/nm] from simulation; npz and extended XYZ), ``train`` (energy and
force matching of neural potentials, TOML configs, saved models), ``trajectory_grad``
(differentiable N-step trajectories with checkpointed segments) and ``reweighting`` (DiffTRe
ensemble averages and their gradients).
"""

from . import datasets, reweighting, train, trajectory_grad

__all__ = [
    "datasets",
    "reweighting",
    "train",
    "trajectory_grad",
]
