"""Implicit solvent from OpenMM: GBSAOBCForce and the CustomGBForce recipes of OpenMM's
implicit/*.xml become diffmd's GB kernel; anything else GB-like is refused by name."""

import warnings

import jax
import numpy as np
import openmm
import pytest
from openmm import app, unit

import diffmd
from conftest import assert_energy_close, assert_forces_close
from openmm_reference import energies_and_forces


def alanine():
    prmtop_path, crd_path = diffmd.data.alanine_dipeptide()
    prmtop = app.AmberPrmtopFile(prmtop_path)
    positions = app.AmberInpcrdFile(crd_path).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return prmtop, positions


def from_prmtop(model, **kw):
    prmtop, positions = alanine()
    with warnings.catch_warnings():  # OBC1/HCT warn about the prmtop's mbondi2 radii
        warnings.simplefilter("ignore")
        system = prmtop.createSystem(implicitSolvent=model, **kw)
    return system, positions, prmtop.topology


def from_forcefield(xml, **kw):
    prmtop, positions = alanine()
    return app.ForceField("amber14-all.xml", xml).createSystem(prmtop.topology, **kw), positions, prmtop.topology


CUTOFF = dict(nonbondedMethod=app.CutoffNonPeriodic, nonbondedCutoff=1.0 * unit.nanometer)


# (how the System is made, GB force OpenMM builds, diffmd model, tolerance). The CustomGBForce
# recipes write 1/(4 pi eps0) as 138.935485 where diffmd (and GBSAOBCForce) use CODATA 2018's
# 138.9354576: 2e-7 relative in the polar term.
CASES = [
    pytest.param(lambda: from_prmtop(app.OBC2), "GBSAOBCForce", "obc2", 1e-8, id="prmtop-obc2"),
    pytest.param(lambda: from_prmtop(app.OBC2, **CUTOFF), "GBSAOBCForce", "obc2", 1e-8, id="prmtop-obc2-cutoff",
                 marks=pytest.mark.slow),
    pytest.param(lambda: from_prmtop(app.HCT), "CustomGBForce", "hct", 1e-6, id="prmtop-hct", marks=pytest.mark.slow),
    pytest.param(lambda: from_prmtop(app.OBC1, **CUTOFF), "CustomGBForce", "obc1", 1e-6, id="prmtop-obc1-cutoff",
                 marks=pytest.mark.slow),
    pytest.param(lambda: from_forcefield("implicit/obc2.xml"), "CustomGBForce", "obc2", 1e-6, id="ff-obc2"),
    pytest.param(lambda: from_forcefield("implicit/obc1.xml", **CUTOFF), "CustomGBForce", "obc1", 1e-6,
                 id="ff-obc1-cutoff", marks=pytest.mark.slow),
    pytest.param(lambda: from_forcefield("implicit/hct.xml", soluteDielectric=2.0, solventDielectric=80.0, **CUTOFF),
                 "CustomGBForce", "hct", 1e-6, id="ff-hct-dielectrics-cutoff"),
]


@pytest.mark.parametrize("make,force,model,tol", CASES)
def test_gb_from_openmm_matches_openmm(make, force, model, tol):
    system_omm, positions, topology = make()
    assert force in {type(f).__name__ for f in system_omm.getForces()}
    for i, f in enumerate(system_omm.getForces()):
        f.setForceGroup(i)  # energies per force
    per_force, total, forces = energies_and_forces(system_omm, positions)
    system = diffmd.from_openmm(system_omm, positions, topology)
    assert system.physics.implicit_solvent == model
    params, energy_fn = system.energy_fn()  # GB model, dielectrics and cutoff from the System
    nbrs = energy_fn.neighbor_list(system.positions)

    def total_and_terms(x):
        terms = energy_fn.terms(params, x, None, nbrs)
        return sum(terms.values()), terms

    (e, terms), g = jax.jit(jax.value_and_grad(total_and_terms, has_aux=True))(system.positions)
    assert_energy_close(terms["generalized_born"] + terms["surface_area"], per_force[force], tol, what=force)
    assert_energy_close(e, total, tol, what="total")
    assert_forces_close(-np.asarray(g), forces, tol, what="forces")


def test_other_gb_forces_are_refused_by_name():
    system_omm, positions, _ = from_forcefield("implicit/gbn2.xml")
    with pytest.raises(diffmd.UnsupportedError, match="CustomGBForce .*GBn"):
        diffmd.from_openmm(system_omm, positions)
    salty, _, _ = from_prmtop(app.OBC2, implicitSolventKappa=1.0 / unit.nanometer)
    with pytest.raises(diffmd.UnsupportedError, match="salt"):
        diffmd.from_openmm(salty, positions)
    # a recipe with an edited expression is not OpenMM's: it must not be read as one
    edited, _, _ = from_forcefield("implicit/obc2.xml")
    gb = next(f for f in edited.getForces() if isinstance(f, openmm.CustomGBForce))
    name, expression, kind = gb.getComputedValueParameters(1)
    assert "4.85" in expression
    gb.setComputedValueParameters(1, name, expression.replace("4.85", "4.9"), kind)
    with pytest.raises(diffmd.UnsupportedError, match="CustomGBForce"):
        diffmd.from_openmm(edited, positions)
