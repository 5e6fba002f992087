"""Free energies from simulations: MBAR, gradients of free energies, absolute binding free energies.

``mbar(u_kn, n_k)`` estimates free energies, their uncertainties and the overlap matrix
(JAX, float64); ``free_energy_gradient`` differentiates a free-energy difference with
respect to any parameter pytree by the end-state identity; ``abfe(complex, "LIG", ...)``
runs the complex and solvent legs of an absolute binding free energy (lambda windows as
one vmapped ensemble with Hamiltonian replica exchange, MBAR, a restraint and its
standard-state correction). ``select_atoms(system, "resname LIG, 0-23")`` turns a selection
string into atom indices.
"""

from ._abfe import ABFEResult as ABFEResult
from ._abfe import abfe as abfe
from ._gradients import ensemble_average_gradient as ensemble_average_gradient
from ._gradients import free_energy_gradient as free_energy_gradient
from ._legs import LambdaSchedule as LambdaSchedule
from ._legs import LegResult as LegResult
from ._legs import lambda_schedule as lambda_schedule
from ._mbar import MBARResult as MBARResult
from ._mbar import mbar as mbar
from ._selection import ligand_system as ligand_system
from ._selection import select_atoms as select_atoms

__all__ = ["ABFEResult", "LambdaSchedule", "LegResult", "MBARResult", "abfe", "ensemble_average_gradient",
           "free_energy_gradient", "lambda_schedule", "ligand_system", "mbar",
           "select_atoms"]
