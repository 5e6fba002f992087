"""Free energies from simulations: MBAR, gradients of free energies, absolute binding free energies.

``mbar(u_kn, n_k)`` estimates free energies, their uncertainties and the overlap matrix
(JAX, float64); ``free_energy_gradient`` differentiates a free-energy difference with
respect to any parameter pytree by the end-state identity; ``abfe(complex, "LIG", ...)``
runs the complex and solvent legs of an absolute binding free energy (lambda windows as
one vmapped ensemble with Hamiltonian replica exchange, MBAR, a restraint and its
standard-state correction); ``ABFEResult.gradient`` differentiates a binding free energy with
respect to force-field parameters (``binding_free_energy_gradient``, with ``ligand_charges``
for the ligand's charges) and ``ABFEResult.reweight`` predicts it at new parameters from the
same frames. ``select_atoms(system, "resname LIG, 0-23")`` turns a selection string into atom
indices.
"""

from ._abfe import ABFEResult as ABFEResult
from ._abfe import abfe as abfe
from ._binding import binding_free_energy_gradient as binding_free_energy_gradient
from ._binding import ligand_charges as ligand_charges
from ._binding import reweighted_binding_free_energy as reweighted_binding_free_energy
from ._gradients import ensemble_average_gradient as ensemble_average_gradient
from ._gradients import free_energy_gradient as free_energy_gradient
from ._legs import LambdaSchedule as LambdaSchedule
from ._legs import LegResult as LegResult
from ._legs import lambda_schedule as lambda_schedule
from ._mbar import MBARResult as MBARResult
from ._mbar import mbar as mbar
from ._selection import ligand_system as ligand_system
from ._selection import select_atoms as select_atoms

__all__ = ["ABFEResult", "LambdaSchedule", "LegResult", "MBARResult", "abfe", "binding_free_energy_gradient",
           "ensemble_average_gradient", "free_energy_gradient", "lambda_schedule", "ligand_charges", "ligand_system",
           "mbar", "reweighted_binding_free_energy", "select_atoms"]
