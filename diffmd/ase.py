"""``diffmd.ase``: diffmd potentials as ASE calculators (see ``diffmd.interop``).

    atoms = system.to_ase()
    atoms.calc = diffmd.ase.Calculator(system, implicit_solvent="obc2")
"""

from .interop import Calculator, system_to_ase

__all__ = ["Calculator", "system_to_ase"]
