"""Energies, forces and parameter gradients of a protein-ligand complex, checked against OpenMM.

Run: python examples/energy_and_gradients.py   (needs openmm for the comparison)
"""

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import diffmd  # noqa: E402

system = diffmd.load_amber(*diffmd.data.t4_lysozyme())
params, energy_fn = system.energy_fn(nonbonded="nocutoff", implicit_solvent="obc2", precision="double")
nbrs = energy_fn.neighbor_list(system.positions)

energy, grads = jax.jit(jax.value_and_grad(energy_fn, argnums=(0, 1)))(params, system.positions, None, nbrs)
param_grad, position_grad = grads
print(f"T4 lysozyme L99A + p-xylene, OBC2: E = {float(energy):.4f} kJ/mol")
for name, value in energy_fn.terms(params, system.positions, None, nbrs).items():
    print(f"  {name:>22s}: {float(value):14.4f} kJ/mol")
print("largest |dE/dq| [kJ/mol/e]:", float(np.abs(param_grad.charges).max()))
print("largest |dE/d radius| [kJ/mol/nm]:", float(np.abs(param_grad.gb_radii).max()))

ligand = diffmd.load_amber(diffmd.data.t4_lysozyme("ligand")[0])
receptor = diffmd.load_amber(diffmd.data.t4_lysozyme("receptor")[0])
interaction = diffmd.interaction_energy(system, receptor, ligand, implicit_solvent="obc2")
print(f"interaction energy at this pose: {interaction['total']:.3f} kJ/mol")

try:
    import openmm
    from openmm import app, unit
except ImportError:
    raise SystemExit("openmm not installed: skipping the comparison")
prmtop = app.AmberPrmtopFile(diffmd.data.t4_lysozyme()[0])
omm = prmtop.createSystem(nonbondedMethod=app.NoCutoff, implicitSolvent=app.OBC2)
context = openmm.Context(omm, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
context.setPositions(system.positions)
reference = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
print(f"OpenMM Reference: {reference:.4f} kJ/mol (relative difference {abs(float(energy) - reference) / abs(reference):.1e})")
