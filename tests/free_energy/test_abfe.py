"""Absolute binding free energies: schedule, selections, statistics, the CLI on a tiny protocol,
and (slow) CB7-B2 in OBC2 against openmmtools' alchemical system run window by window with pymbar."""

import json
import os

import jax
import numpy as np
import pytest

import diffmd
from diffmd.cli import main
from diffmd.free_energy import LambdaSchedule, abfe, lambda_schedule, ligand_system
from diffmd.free_energy._timeseries import statistical_inefficiency, subsample_indices
from diffmd.kernels.errors import InputError


@pytest.fixture(scope="module")
def cb7():
    return diffmd.load_amber(*diffmd.data.cb7_b2())


def test_lambda_schedule():
    s = lambda_schedule(12, restrained=True)
    assert len(s) == 12
    # the unrestrained coupled complex, then the restraint on, charges off, then sterics off
    assert (s.restraints[0], s.electrostatics[0], s.sterics[0]) == (0.0, 1.0, 1.0)
    assert np.all(s.restraints[1:] == 1.0)
    assert (s.electrostatics[-1], s.sterics[-1]) == (0.0, 0.0)
    assert np.all(np.diff(s.electrostatics) <= 0) and np.all(np.diff(s.sterics) <= 0)
    assert np.all(s.sterics[s.electrostatics > 0] == 1.0)  # charges go first
    free = lambda_schedule(5)
    assert np.all(free.restraints == 0.0) and (free.electrostatics[0], free.sterics[-1]) == (1.0, 0.0)
    with pytest.raises(InputError, match="at least 4 lambda windows"):
        lambda_schedule(3, restrained=True)
    with pytest.raises(InputError, match="at least 3"):
        lambda_schedule(0)
    with pytest.raises(InputError, match=r"in \[0, 1\]"):
        LambdaSchedule([1.0, 1.5], [1.0, 0.0], [0.0, 0.0])
    with pytest.raises(InputError, match="one per window"):
        LambdaSchedule([1.0, 0.0], [1.0], [0.0, 0.0])


def test_statistical_inefficiency_matches_pymbar():
    timeseries = pytest.importorskip("pymbar.timeseries")
    rng = np.random.default_rng(1)
    x = np.zeros(3000)
    for t in range(1, len(x)):  # AR(1) with g = (1 + 0.9) / (1 - 0.9) = 19
        x[t] = 0.9 * x[t - 1] + rng.normal()
    g = statistical_inefficiency(x)
    assert g == pytest.approx(timeseries.statistical_inefficiency(x), rel=1e-9)
    assert 10.0 < g < 30.0
    assert statistical_inefficiency(rng.normal(size=2000)) < 1.5
    idx = subsample_indices(100, 9.6)
    assert idx[0] == 0 and np.all(np.diff(idx) >= 9) and idx[-1] < 100


def test_ligand_system_matches_ligand_prmtop(cb7):
    # the guest cut out of the complex has exactly the force field of the guest's own prmtop
    ligand = diffmd.free_energy._selection.residue_atoms(cb7, "B2")
    alone = ligand_system(cb7, ligand)
    own = diffmd.load_amber(*diffmd.data.cb7_b2("ligand"))
    assert alone.n_atoms == own.n_atoms == len(ligand) and alone.box is None
    assert alone.topology.atom_names == own.topology.atom_names
    x = cb7.positions[ligand]
    for model_settings in ({"implicit_solvent": "obc2"}, {}):
        got = {}
        for name, system in (("cut", alone), ("own", own)):
            params, fn = system.energy_fn(**model_settings)
            got[name] = {k: float(v) for k, v in jax.jit(fn.terms)(params, x, None, fn.neighbor_list(x)).items()}
        for term, value in got["own"].items():
            assert got["cut"][term] == pytest.approx(value, rel=1e-10, abs=1e-9), term
    assert abs(got["own"]["torsion"]) > 1.0


def test_abfe_input_errors(cb7):
    with pytest.raises(InputError, match="no residue named 'XYZ'.*B2"):
        abfe(cb7, "XYZ", implicit_solvent="obc2")
    with pytest.raises(InputError, match="at least 4 lambda windows"):
        abfe(cb7, "B2", implicit_solvent="obc2", windows=2)
    with pytest.raises(InputError, match="solvent leg needs its own system"):
        abfe(cb7, "B2")
    with pytest.raises(InputError, match="MBAR needs at least 2"):
        abfe(cb7, "B2", implicit_solvent="obc2", ns_per_window=0.001, steps_per_iteration=500)
    with pytest.raises(InputError, match="unknown restraint"):
        abfe(cb7, "B2", implicit_solvent="obc2", restraint="harmonic")


@pytest.mark.slow  # 25-110 s on 2 cores: CI's slow stage runs it (default suite < 15 min)
def test_cli_tiny_protocol(tmp_path, capsys):
    out = tmp_path / "abfe"
    prmtop, coords = diffmd.data.cb7_b2()
    rc = main(["abfe", prmtop, coords, "--ligand", "B2", "--implicit-solvent", "obc2", "--windows", "6",
               "--ns-per-window", "0.0004", "--steps-per-iteration", "25", "--equilibration", "0", "--no-minimize",
               "--restraint", "flat-bottom", "--no-progress", "--out", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads((out / "result.json").read_text())
    for key in ("dg_kcal_per_mol", "dg_error_kcal_per_mol", "dg_kj_per_mol", "dg_error_kj_per_mol",
                "restraint_correction_kcal_per_mol"):
        assert np.isfinite(result[key]), key
    assert result["dg_kj_per_mol"] == pytest.approx(4.184 * result["dg_kcal_per_mol"])
    legs = result["legs"]
    assert set(legs) == {"complex", "solvent"}
    assert legs["complex"]["windows"] == legs["solvent"]["windows"] == 6
    assert legs["complex"]["iterations"] == 8 and legs["complex"]["ns_per_window"] == pytest.approx(0.0004)
    # the cycle: dG = dF_solvent - dF_complex - correction
    want = legs["solvent"]["dg_kcal_per_mol"] - legs["complex"]["dg_kcal_per_mol"] \
        - result["restraint_correction_kcal_per_mol"]
    assert result["dg_kcal_per_mol"] == pytest.approx(want)
    assert result["restraint"] == "flat-bottom" and result["restraint_correction_kcal_per_mol"] < 0.0
    assert printed["dg_kcal_per_mol"] == result["dg_kcal_per_mol"]
    for png in ("overlap.png", "convergence.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.isfile(out / "complex" / "member-005" / "state.csv")


def test_cli_errors(tmp_path, capsys):
    prmtop, coords = diffmd.data.cb7_b2()
    assert main(["abfe", prmtop, coords, "--ligand", "LIG", "--implicit-solvent", "obc2", "--out", str(tmp_path)]) == 2
    assert "no residue named 'LIG'" in capsys.readouterr().err
    assert main(["abfe", prmtop, coords, "--ligand", "B2", "--solvent-prmtop", prmtop, "--out", str(tmp_path)]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["abfe", prmtop, coords, "--ligand", "B2", "--implicit-solvent", "obc2", "--windows", "1",
                 "--out", str(tmp_path)]) == 2
    assert "lambda windows" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["abfe", prmtop, coords, "--out", str(tmp_path)])  # --ligand is required


# ----------------------------------------------------------------------------- against openmmtools (slow)

#: the short CB7-B2 protocol both engines run: OBC2, no cutoff, H-bond constraints, hydrogen mass 1.5 amu,
#: 4 fs LangevinMiddle at 300 K (1/ps), 10 windows per leg, 12 ps per window, samples every 0.5 ps, the
#: first 10% dropped (masses change the dynamics, not the sampled distribution)
PROTOCOL = {"windows": 10, "ns_per_window": 0.012, "steps_per_iteration": 125, "equilibration": 0.1, "dt": 0.004,
            "hydrogen_mass": 1.5, "temperature": 300.0, "friction": 1.0}


def _openmm_leg(prmtop, positions, ligand, schedule, restraint, seed):
    """One leg with openmmtools' alchemical system, run window after window (OpenMM's CPU platform),
    every sample evaluated in every window; pymbar on the per-window subsampled samples.

    Returns (dF [kT], its standard deviation [kT]).
    """
    import openmm
    from openmm import app, unit
    from openmmtools import alchemy
    from pymbar import MBAR, timeseries

    from openmm_reference import boresch_force

    omm = app.AmberPrmtopFile(prmtop).createSystem(nonbondedMethod=app.NoCutoff, constraints=app.HBonds,
                                                   implicitSolvent=app.OBC2,
                                                   hydrogenMass=PROTOCOL["hydrogen_mass"] * unit.amu)
    region = alchemy.AlchemicalRegion(alchemical_atoms=[int(i) for i in ligand], annihilate_electrostatics=False,
                                      annihilate_sterics=False)
    system = alchemy.AbsoluteAlchemicalFactory().create_alchemical_system(omm, region)
    if restraint is not None:
        system.addForce(boresch_force(restraint["atoms"], [restraint[k] for k in (
            "distance", "angle_a", "angle_b", "dihedral_a", "dihedral_b", "dihedral_c", "k_distance", "k_angle_a",
            "k_angle_b", "k_dihedral_a", "k_dihedral_b", "k_dihedral_c")], 0.0))
    temperature = PROTOCOL["temperature"] * unit.kelvin
    kT = (unit.MOLAR_GAS_CONSTANT_R * temperature).value_in_unit(unit.kilojoule_per_mole)
    integrator = openmm.LangevinMiddleIntegrator(temperature, PROTOCOL["friction"] / unit.picosecond,
                                                 PROTOCOL["dt"] * unit.picosecond)
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    states = list(zip(schedule.sterics, schedule.electrostatics, schedule.restraints))

    def apply(state):
        sterics, electrostatics, restraints = state
        context.setParameter("lambda_sterics", float(sterics))
        context.setParameter("lambda_electrostatics", float(electrostatics))
        if restraint is not None:
            context.setParameter("lambda_restraints", float(restraints))

    apply(states[0])
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context)
    start = context.getState(getPositions=True).getPositions()
    iterations = round(PROTOCOL["ns_per_window"] * 1000 / PROTOCOL["dt"]) // PROTOCOL["steps_per_iteration"]
    drop = int(PROTOCOL["equilibration"] * iterations)
    blocks, n_k = [], []
    for k, state in enumerate(states):
        apply(state)
        context.setPositions(start)
        context.setVelocitiesToTemperature(temperature, seed + k)
        u = []
        for _ in range(iterations):
            integrator.step(PROTOCOL["steps_per_iteration"])
            row = []
            for other in states:
                apply(other)
                row.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
                    unit.kilojoule_per_mole) / kT)
            apply(state)
            u.append(row)
        u = np.array(u[drop:]).T  # (K, samples)
        keep = timeseries.subsample_correlated_data(u[k])
        blocks.append(u[:, keep])
        n_k.append(len(keep))
    with jax.numpy_rank_promotion("allow"):  # pymbar's own JAX code broadcasts freely
        result = MBAR(np.concatenate(blocks, axis=1), np.array(n_k),
                      solver_protocol="robust").compute_free_energy_differences()
    return float(result["Delta_f"][0, -1]), float(result["dDelta_f"][0, -1])


@pytest.mark.slow
def test_cb7_b2_matches_openmmtools(cb7, tmp_path):
    pytest.importorskip("openmmtools")
    pytest.importorskip("pymbar")
    ours = abfe(cb7, "B2", implicit_solvent="obc2", restraint="boresch", seed=3, out=str(tmp_path), **PROTOCOL)
    ligand = diffmd.free_energy._selection.residue_atoms(cb7, "B2")
    legs = {
        "complex": _openmm_leg(diffmd.data.cb7_b2()[0], cb7.positions, ligand, ours.complex.schedule,
                               ours.restraint_parameters, seed=11),
        # the guest's own prmtop (the same force field as the one cut out of the complex) at the bound pose
        "solvent": _openmm_leg(diffmd.data.cb7_b2("ligand")[0], cb7.positions[ligand], range(len(ligand)),
                               ours.solvent.schedule, None, seed=12)}
    kT = ours.complex.kT
    # the legs are printed, not asserted one by one: at 12 ps per window the solvent leg's MBAR error
    # (~0.05 kT from 16 subsampled frames) misses the guest's slow conformational changes, and the two
    # engines' solvent legs differed by 0.3 kT (z = 4) with alchemical energies equal to 1e-7 (measured)
    report = {name: (leg.dg, leg.dg_error, *legs[name]) for name, leg in (("complex", ours.complex),
                                                                           ("solvent", ours.solvent))}
    theirs_dg = (legs["solvent"][0] - legs["complex"][0]) * kT - ours.restraint_correction
    theirs_error = np.hypot(legs["solvent"][1], legs["complex"][1]) * kT
    print(f"CB7-B2 dG: diffmd {ours.dg_kcal:.2f} +- {ours.dg_error / 4.184:.2f}, openmmtools "
          f"{theirs_dg / 4.184:.2f} +- {theirs_error / 4.184:.2f} kcal/mol; legs [kT] {report}")
    assert abs(ours.dg - theirs_dg) <= 2.0 * np.hypot(ours.dg_error, theirs_error)
    # the leg's numbers are not all noise: decoupling the charged guest costs free energy in both
    assert ours.solvent.dg > 5.0 and ours.complex.dg > ours.solvent.dg
