"""``diffmd.from_openmm`` of a System with a ``CMAPTorsionForce``, against OpenMM (computed at test time)."""

import jax
import numpy as np
import openmm
from openmm import app

import diffmd
from conftest import assert_energy_close, assert_forces_close
from openmm_reference import energies_and_forces

SIZE = 24  # grid points per dihedral, as Amber's ff19SB maps


def _smooth_map(shift: float) -> np.ndarray:
    """A periodic (SIZE, SIZE) map [kJ/mol] indexed [phi, psi], smooth enough for the bicubic spline."""
    angles = -np.pi + 2 * np.pi * np.arange(SIZE) / SIZE
    phi, psi = np.meshgrid(angles, angles, indexing="ij")
    return 4.0 * np.cos(phi + shift) + 2.5 * np.sin(2 * psi) + 1.5 * np.cos(phi - psi)


def test_cmap_torsions_of_an_openmm_system_match_openmm():
    """Two maps (in OpenMM's flat order, as ``grid_to_openmm`` writes them) on the alanine-dipeptide
    backbone: energy and forces equal OpenMM's. (``from_openmm`` used to fail on
    any CMAPTorsionForce: it imported a grid helper that did not exist.)"""
    prmtop, crd = diffmd.data.alanine_dipeptide()
    omm = app.AmberPrmtopFile(prmtop).createSystem()
    positions = np.asarray(app.AmberInpcrdFile(crd).getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer))
    cmap = openmm.CMAPTorsionForce()
    for shift in (0.0, 0.7):
        cmap.addMap(SIZE, diffmd.kernels.cmap.grid_to_openmm(_smooth_map(shift)))
    # phi C(ACE)-N-CA-C and psi N-CA-C-N(NME), once with each map
    phi, psi = (4, 6, 8, 14), (6, 8, 14, 16)
    cmap.addTorsion(0, *phi, *psi)
    cmap.addTorsion(1, *phi, *psi)
    omm.addForce(cmap)
    for group, force in enumerate(omm.getForces()):
        force.setForceGroup(group)  # per-force energies from OpenMM
    per_force, total, forces = energies_and_forces(omm, positions, None)

    system = diffmd.from_openmm(omm, positions)
    assert system.terms.cmap_idx.shape[0] == 2
    params, energy_fn = system.energy_fn()
    nbrs = energy_fn.neighbor_list(system.positions, None)
    terms = jax.jit(energy_fn.terms)(params, system.positions, None, nbrs)
    assert_energy_close(terms["cmap"], per_force["CMAPTorsionForce"], 1e-6, what="cmap")
    energy, grad = jax.jit(jax.value_and_grad(energy_fn, argnums=1))(params, system.positions, None, nbrs)
    assert_energy_close(energy, total, 1e-6, what="total")
    assert_forces_close(-np.asarray(grad), forces, 1e-6, what="forces")
