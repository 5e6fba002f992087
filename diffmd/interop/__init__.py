"""diffmd in other MD ecosystems: ASE calculators and jax-md energy functions, both ways."""

from ._ase import Calculator as Calculator
from ..system import system_to_ase as system_to_ase
from ._jax_md import JaxMDEnergy as JaxMDEnergy
from ._jax_md import NeighborFns as NeighborFns
from ._jax_md import from_jax_md as from_jax_md
from ._jax_md import to_jax_md as to_jax_md

__all__ = ["Calculator", "system_to_ase", "JaxMDEnergy", "NeighborFns", "from_jax_md", "to_jax_md"]
