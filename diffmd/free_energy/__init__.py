"""Free energies from simulations: MBAR and gradients of free energies.

``mbar(u_kn, n_k)`` estimates free energies, their uncertainties and the overlap matrix
(JAX, float64); ``free_energy_gradient`` differentiates a free-energy difference with
respect to any parameter pytree by the end-state identity.
"""

from ._gradients import ensemble_average_gradient as ensemble_average_gradient
from ._gradients import free_energy_gradient as free_energy_gradient
from ._mbar import MBARResult as MBARResult
from ._mbar import mbar as mbar

__all__ = ["MBARResult", "ensemble_average_gradient", "free_energy_gradient", "mbar"]
