"""What a molecular system is, independent of files and of running it.

Owns ``System`` (topology, masses, force-field parameters, coordinates; ``System.energy_fn``
gives the JAX energy model), ``Topology`` (names, elements, residues, bonds), ``Physics``
(the settings an imported OpenMM System fixes), the generalized-Born radius check and
``interaction_energy``. Units: nm, amu, e, kJ/mol. Readers that build Systems live in
``diffmd.io``.
"""

from ._ase_atoms import system_to_ase
from ._gb_radii import RECOMMENDED, standard_radii, standard_screen, warn_if_nonstandard_gb
from ._interaction import interaction_energy
from ._physics import ENERGY_KEYS, Physics
from ._system import System, checked_positions
from ._topology import (
    NUMBER_BY_SYMBOL,
    SYMBOL_BY_NUMBER,
    Topology,
    chains_from_bonds,
    element_from_mass,
    element_from_name,
    require_finite,
)

__all__ = [
    "system_to_ase",
    "RECOMMENDED",
    "standard_radii",
    "standard_screen",
    "warn_if_nonstandard_gb",
    "interaction_energy",
    "ENERGY_KEYS",
    "Physics",
    "System",
    "checked_positions",
    "NUMBER_BY_SYMBOL",
    "SYMBOL_BY_NUMBER",
    "Topology",
    "chains_from_bonds",
    "element_from_mass",
    "element_from_name",
    "require_finite",
]
