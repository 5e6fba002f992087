"""diffmd: JAX-native, differentiable molecular dynamics for biomolecules.

Units: nm, ps, amu, kJ/mol, e, K (OpenMM's). Energy models are pairs
``(params, energy_fn)`` with ``energy_fn(params, positions, box, neighbors)``.

Layout (each layer imports only the ones above it):

- ``diffmd.kernels``: array math (pair geometry, neighbor tables, energy terms);
- ``diffmd.potentials``: energy models built from kernels (Amber, neural, alchemical, restraints);
- ``diffmd.system``: ``System``, ``Topology``, ``Physics``;
- ``diffmd.io``: files in and out, reporters, checkpoints;
- ``diffmd.md``: integrators, barostat, minimizer, the step chunk and host loop, ``simulate``;
- ``diffmd.ensemble``: batched runs of many systems, replica exchange;
- ``diffmd.learn``: datasets, training, trajectory gradients, reweighting;
- ``diffmd.free_energy``: MBAR and free-energy gradients;
- ``diffmd.cli``: the ``diffmd`` command.
"""

from . import data, io, kernels, potentials
from .kernels import constants as units
from .kernels import errors
from .kernels.errors import DiffmdError, InputError, SimulationError, UnsupportedError
from .kernels.neighbors import Neighbors, update_neighbors
from .kernels.precision import resolve_precision
from .potentials import neural
from . import system
from .system import Physics, System, Topology, interaction_energy
from .io import from_openmm, load_amber, load_openmm
from . import md
from .md import MinimizeResult, SimulationResult, enable_compilation_cache, minimize, simulate
from . import ensemble
from .ensemble import replica_exchange
from . import learn
from .learn import datasets, reweighting, train, trajectory_grad
from . import free_energy
from . import workflows
from .workflows import prepare  # PDB + SDF -> Amber files (the runner's set-up: diffmd.md.prepare)
from . import ase, interop

__version__ = "0.1.0"

__all__ = [
    "data", "io", "kernels", "potentials", "units", "errors", "neural", "system", "md", "ensemble", "learn",
    "free_energy", "workflows", "interop", "ase", "replica_exchange", "datasets", "reweighting", "train", "trajectory_grad",
    "DiffmdError", "InputError", "SimulationError", "UnsupportedError", "Neighbors", "update_neighbors",
    "resolve_precision", "Physics", "System", "Topology", "interaction_energy", "from_openmm", "load_amber",
    "load_openmm", "MinimizeResult", "SimulationResult", "enable_compilation_cache", "minimize", "prepare", "simulate",
]
