"""diffmd potentials inside ASE: ``Calculator`` (an ``ase.calculators.calculator.Calculator``) and
``system_to_ase`` (the matching ``ase.Atoms``, from ``diffmd.system``).

ASE works in Angstrom and eV; diffmd in nm and kJ/mol. Conversions happen here only, with
``kernels.constants`` (``ANGSTROM`` = 0.1 nm, ``EV`` = 96.485 kJ/mol): energy [eV], forces
[eV/A], stress [eV/A^3] (ASE's sign: the derivative of the energy with respect to strain over the
volume, ``stress = (1/V) dE/d(epsilon)``, Voigt order xx, yy, zz, yz, xz, xy).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import all_changes

from ..kernels.constants import ANGSTROM, EV
from ..kernels.errors import InputError


class Calculator(_AseCalculator):
    """An ASE calculator for any diffmd potential.

    Args:
        system: the ``diffmd.System`` the atoms are (its topology; its force field unless
            ``potential`` is given).
        potential: ``(params, energy_fn)`` with diffmd's signature (a trained model, a sum, an adapted
            jax-md function); default ``system.energy_fn(**energy_options)``.
        energy_options: keyword arguments of ``System.energy_fn`` (``nonbonded=``, ``cutoff=``,
            ``implicit_solvent=``, ``precision=``...); only without ``potential``.

    The atoms must be the system's atoms in its order. The neighbor table is rebuilt at each
    new geometry (ASE drives the loop on the host). ``stress`` is available for periodic atoms.

    Example:
        >>> atoms = system.to_ase()                                           # doctest: +SKIP
        >>> atoms.calc = diffmd.ase.Calculator(system, implicit_solvent="obc2")  # doctest: +SKIP
        >>> ase.optimize.BFGS(atoms).run(fmax=0.05)                           # doctest: +SKIP
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, system, potential=None, **energy_options):
        super().__init__()
        if potential is not None and energy_options:
            raise InputError(f"energy options {sorted(energy_options)} only apply to the system's force field; with "
                             "potential= build them into the potential")
        if potential is None:
            try:
                potential = system.energy_fn(**energy_options)
            except TypeError as exc:
                raise InputError(f"unknown energy option for System.energy_fn: {exc}") from None
        if not (isinstance(potential, (tuple, list)) and len(potential) == 2 and callable(potential[1])):
            raise InputError("potential must be a (params, energy_fn) pair")
        self.system = system
        self.params, self.energy_fn = potential
        self._value_and_grad = jax.jit(jax.value_and_grad(self._energy, argnums=(1, 2)))

    def _energy(self, params, positions, strain, box, neighbors):
        # E(positions (1 + strain), box (1 + strain)): its strain derivative at 0 is the virial term ASE wants
        deform = jnp.eye(3, dtype=positions.dtype) + strain
        new_box = None if box is None else box @ deform
        return self.energy_fn(params, positions @ deform, new_box, neighbors)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        n = self.system.n_atoms
        if len(atoms) != n:
            raise InputError(f"the atoms have {len(atoms)} entries but the diffmd system has {n}")
        positions = np.asarray(atoms.get_positions(), np.float64) * ANGSTROM
        periodic = bool(np.all(atoms.pbc))
        if np.any(atoms.pbc) and not periodic:
            raise InputError("diffmd handles fully periodic or non-periodic atoms, not mixed pbc")
        box = np.asarray(atoms.get_cell()[:], np.float64) * ANGSTROM if periodic else None
        if periodic and getattr(self.energy_fn, "nonbonded", None) == "nocutoff":
            raise InputError("periodic atoms with nonbonded='nocutoff': pass nonbonded='cutoff' or 'pme'")
        neighbors = self.energy_fn.neighbor_list(positions, box) if hasattr(self.energy_fn, "neighbor_list") else None
        dtype = positions.dtype
        strain = jnp.zeros((3, 3), dtype)
        energy, (grad, dstrain) = self._value_and_grad(self.params, jnp.asarray(positions), strain,
                                                       None if box is None else jnp.asarray(box), neighbors)
        e = float(energy) / EV
        self.results["energy"] = self.results["free_energy"] = e
        self.results["forces"] = -np.asarray(grad, np.float64) * ANGSTROM / EV
        if periodic:
            volume = abs(np.linalg.det(box)) / ANGSTROM**3  # A^3
            sigma = np.asarray(dstrain, np.float64) / EV / volume
            sigma = 0.5 * (sigma + sigma.T)
            self.results["stress"] = np.array([sigma[0, 0], sigma[1, 1], sigma[2, 2], sigma[1, 2], sigma[0, 2],
                                               sigma[0, 1]])
        elif "stress" in properties:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress needs periodic atoms (a system with a box)")
