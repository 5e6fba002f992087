"""diffmd: JAX-native, differentiable molecular dynamics for biomolecules.

Units: nm, ps, amu, kJ/mol, e, K (OpenMM's). Energy models are pairs
``(params, energy_fn)`` with ``energy_fn(params, positions, box, neighbors)``.
"""

from . import data, io  # noqa: F401
from .kernels import constants as units  # noqa: F401
from .kernels import errors  # noqa: F401
from .kernels.errors import DiffmdError, InputError, SimulationError, UnsupportedError  # noqa: F401
from .kernels.neighbors import Neighbors, update_neighbors  # noqa: F401
from .kernels.precision import resolve_precision  # noqa: F401
from ._system import System, from_openmm, load_amber, load_openmm  # noqa: F401
from ._physics import Physics  # noqa: F401
from ._topology import Topology  # noqa: F401
from ._interaction import interaction_energy  # noqa: F401
from . import integrators  # noqa: F401
from .minimize import MinimizeResult, minimize  # noqa: F401
from .simulate import SimulationResult, simulate  # noqa: F401
from .workflows import prepare  # noqa: F401  (PDB + SDF -> Amber files; the runner's set-up is diffmd.simulate.prepare)
from . import ase, interop  # noqa: F401
from . import datasets, ensemble, replica_exchange, reweighting, train, trajectory_grad  # noqa: F401

__version__ = "0.1.0"
