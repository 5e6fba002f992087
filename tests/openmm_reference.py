"""OpenMM reference energies and forces, computed at test time (Reference platform, double)."""

from __future__ import annotations

import numpy as np

try:
    import openmm
    from openmm import app, unit
except ImportError:  # pragma: no cover - openmm is a test dependency
    openmm = None

_METHODS = {}
if openmm is not None:
    _METHODS = {"nocutoff": app.NoCutoff, "cutoff": None, "pme": app.PME}


def openmm_system(prmtop_path, coords_path, nonbonded="nocutoff", cutoff=1.0, implicit_solvent=None,
                  constraints=None, rigid_water=False, dispersion_correction=True, **kwargs):
    """(system, positions [nm], box or None, topology) from OpenMM's Amber loader."""
    prmtop = app.AmberPrmtopFile(prmtop_path)
    inpcrd = app.AmberInpcrdFile(coords_path)
    box = inpcrd.boxVectors
    if box is not None:
        box = np.array([v.value_in_unit(unit.nanometer) for v in inpcrd.boxVectors])
        prmtop.topology.setPeriodicBoxVectors(box)
    method = _METHODS[nonbonded]
    if nonbonded == "cutoff":
        method = app.CutoffPeriodic if box is not None else app.CutoffNonPeriodic
    args = dict(nonbondedMethod=method, constraints=constraints, rigidWater=rigid_water,
                implicitSolvent=implicit_solvent, **kwargs)
    if nonbonded != "nocutoff":
        args["nonbondedCutoff"] = cutoff * unit.nanometer
    system = prmtop.createSystem(**args)
    for i, force in enumerate(system.getForces()):
        force.setForceGroup(i)
        if isinstance(force, openmm.NonbondedForce):
            force.setUseDispersionCorrection(dispersion_correction)
    positions = np.asarray(inpcrd.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return system, positions, box, prmtop.topology


def energies_and_forces(system, positions, box=None, platform="Reference"):
    """Per-force-class energies [kJ/mol], total, and forces (N, 3) [kJ/mol/nm]."""
    integrator = openmm.VerletIntegrator(0.001)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform))
    if box is not None:
        context.setPeriodicBoxVectors(*box)
    context.setPositions(positions)
    per_force = {}
    for i, force in enumerate(system.getForces()):
        state = context.getState(getEnergy=True, groups={i})
        name = type(force).__name__
        per_force[name] = per_force.get(name, 0.0) + state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    state = context.getState(getEnergy=True, getForces=True)
    total = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    forces = np.asarray(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    del context
    return per_force, total, forces


def dhfr_files():
    """(JAC.prmtop, JAC.inpcrd) of DHFR JAC, or a pytest skip that names what is missing.

    The files are openmmtools' package data: the ``[test]`` extra installs openmmtools, so CI
    (``.ci/run``) has them. They are found as the benchmarks find them
    (``benchmarks/_systems.py``: ``$DIFFMD_DHFR_DIR``, the installed openmmtools located
    without importing it, then the benchmarks' download cache); the test never downloads.
    """
    import pytest

    from diffmd import InputError
    from diffmd.cli import _bench as bench

    try:
        systems = bench._import(bench.benchmarks_dir(), "_systems")
        return systems.dhfr_files(download=False)
    except (FileNotFoundError, InputError) as err:
        pytest.skip(f"DHFR JAC needs openmmtools' package data, which the [test] extra installs "
                    f"(CI: pip install -e '.[test]' in .ci/run), or DIFFMD_DHFR_DIR: {err}")


def boresch_force(atoms, values, lambda_restraints=1.0):
    """YANK's Boresch restraint as an OpenMM ``CustomCompoundBondForce`` with the global ``lambda_restraints``.

    ``values``: the 12 numbers (r0 [nm], theta_A0, theta_B0, phi_A0, phi_B0, phi_C0 [rad], K_r
    [kJ/mol/nm^2], K_thetaA, K_thetaB, K_phiA, K_phiB, K_phiC [kJ/mol/rad^2]) in the field order of
    ``diffmd.potentials.restraints.BoreschParams``.
    """
    expression = ("0.5*lambda_restraints*(K_r*(distance(p3,p4)-r_aA0)^2 + K_thetaA*(angle(p2,p3,p4)-theta_A0)^2"
                  " + K_thetaB*(angle(p3,p4,p5)-theta_B0)^2 + K_phiA*dA^2 + K_phiB*dB^2 + K_phiC*dC^2);"
                  "dA = xA - floor(xA/(2*pi)+0.5)*(2*pi); xA = dihedral(p1,p2,p3,p4) - phi_A0;"
                  "dB = xB - floor(xB/(2*pi)+0.5)*(2*pi); xB = dihedral(p2,p3,p4,p5) - phi_B0;"
                  "dC = xC - floor(xC/(2*pi)+0.5)*(2*pi); xC = dihedral(p3,p4,p5,p6) - phi_C0; pi = 3.141592653589793")
    force = openmm.CustomCompoundBondForce(6, expression)
    force.addGlobalParameter("lambda_restraints", float(lambda_restraints))
    for name in ("r_aA0", "theta_A0", "theta_B0", "phi_A0", "phi_B0", "phi_C0", "K_r", "K_thetaA", "K_thetaB",
                 "K_phiA", "K_phiB", "K_phiC"):
        force.addPerBondParameter(name)
    force.addBond([int(a) for a in atoms], [float(v) for v in values])
    return force
