"""Gradients of the CB7-B2 binding free energy with respect to force-field parameters.

One tiny ``abfe`` run (OBC2, 6 windows per leg, 40 exchanges of 25 steps, Boresch restraint)
keeps its frames; the end-state identity's dG/dtheta must equal the central finite difference
of the MBAR-reweighted dG(theta +- h) on those same frames (the identity is the derivative of
that estimator), for the guest's charges and for Lennard-Jones table entries.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffmd
from diffmd.free_energy import abfe, binding_free_energy_gradient, ligand_charges
from diffmd.free_energy._binding import leg_analysis
from diffmd.free_energy._legs import kept_iterations
from diffmd.kernels.errors import InputError

# the tiny abfe run the module shares takes ~100 s on 2 cores: CI runs the module in its slow stage
pytestmark = pytest.mark.slow

H = 1e-4  # finite-difference step: the estimator is smooth, so O(h^2) leaves ~1e-8 relative


@pytest.fixture(scope="module")
def run():
    cb7 = diffmd.load_amber(*diffmd.data.cb7_b2())
    return abfe(cb7, "B2", implicit_solvent="obc2", windows=6, ns_per_window=0.002, steps_per_iteration=25,
                equilibration=0.0, minimize=False, restraint="boresch", keep_frames=True, seed=1)


def _fd(result, params_fn, theta, direction):
    """Central difference of the reweighted dG [kJ/mol] along ``direction``."""
    plus = jax.tree_util.tree_map(lambda t, d: t + H * d, theta, direction)
    minus = jax.tree_util.tree_map(lambda t, d: t - H * d, theta, direction)
    return (result.reweight(params_fn(plus))["dg"] - result.reweight(params_fn(minus))["dg"]) / (2.0 * H)


def test_kept_frames_are_the_samples_mbar_used(run):
    for leg in (run.complex, run.solvent):
        idx = kept_iterations(leg.u, leg.equilibration)[0]
        k = len(leg.schedule)
        n_atoms = {"complex": 156, "solvent": 30}[leg.name]  # CB7 + B2, B2 alone
        assert leg.frames.shape == (len(idx), k, n_atoms, 3) and leg.boxes is None
        assert leg.samples_per_window == len(idx)
        # re-evaluated in float64 at the stored frames: the run's own reduced energies (mixed precision)
        a = leg_analysis(leg)
        redone = a["u"] + a["shift"]
        want = np.transpose(leg.u[idx], (2, 1, 0)).reshape(k, -1)
        np.testing.assert_allclose(redone, want, rtol=2e-6, atol=1e-3)  # float32 pair geometry in the run
    # reweighting to the parameters of the run is the run's dG
    q, params_fn = ligand_charges(run)
    same = run.reweight(params_fn(q))
    assert same["dg"] == pytest.approx(run.dg, abs=1e-3)
    assert same["dg_error"] == pytest.approx(run.dg_error, rel=1e-2)
    assert same["dg_kcal"] == pytest.approx(same["dg"] / 4.184)


def test_charge_gradient_matches_reweighted_finite_differences(run):
    q, params_fn = ligand_charges(run)
    grad = run.gradient(params_fn, q)
    assert grad.shape == q.shape and np.all(np.isfinite(grad))
    assert np.max(np.abs(grad)) > 10.0  # kJ/mol per e: the guest's charges matter
    rng = np.random.default_rng(0)
    for direction in (rng.normal(size=q.shape), np.eye(len(q))[9]):  # a random direction, the first oxygen alone
        want = _fd(run, params_fn, q, jnp.asarray(direction))
        assert float(grad @ direction) == pytest.approx(want, rel=1e-4)
    # the per-leg form (no params_fn): the ligand's entries of both legs, added, are the same numbers
    g_c, g_s = binding_free_energy_gradient(run)
    np.testing.assert_allclose(g_c.charges[run.complex.ligand] + g_s.charges[run.solvent.ligand], grad, rtol=1e-10)
    # the host's charges have a gradient too (the complex leg sees them), the solvent leg has no host
    host = np.setdiff1d(np.arange(len(g_c.charges)), run.complex.ligand)
    assert np.max(np.abs(g_c.charges[host])) > 1.0


def test_lennard_jones_gradient_matches_reweighted_finite_differences(run):
    amber_c = run.complex.params[0].amber
    amber_s = run.solvent.params.amber

    def params_fn(tables):  # the LJ tables are shared: the solvent leg keeps the complex's whole tables
        return (dataclasses.replace(amber_c, lj_a=tables[0], lj_b=tables[1]),
                dataclasses.replace(amber_s, lj_a=tables[0], lj_b=tables[1]))

    tables = (jnp.asarray(amber_c.lj_a, jnp.float64), jnp.asarray(amber_c.lj_b, jnp.float64))
    grad = run.gradient(params_fn, tables)
    # the guest's own types (5-8) against everyone: a relative change of their A and B coefficients
    types = np.asarray(diffmd.load_amber(*diffmd.data.cb7_b2()).terms.atom_type)[run.complex.ligand]
    mask = np.zeros(tables[0].shape, bool)
    mask[np.unique(types)] = True
    mask = mask | mask.T
    for which in ((1.0, 0.0), (0.0, 1.0)):  # repulsion A, dispersion B
        direction = tuple(w * np.where(mask, t, 0.0) for w, t in zip(which, tables))
        want = _fd(run, params_fn, tables, direction)
        got = sum(float(np.sum(g * d)) for g, d in zip(grad, direction))
        assert abs(got) > 0.1
        assert got == pytest.approx(want, rel=1e-4)


def test_gradient_errors(run):
    q, params_fn = ligand_charges(run)
    with pytest.raises(InputError, match="parameters the legs were simulated with"):
        run.gradient(params_fn, q + 0.1)
    with pytest.raises(InputError, match="pair"):
        run.reweight(params_fn(q)[0])
    bare = dataclasses.replace(run, complex=dataclasses.replace(run.complex, frames=None, cache={}))
    with pytest.raises(InputError, match="keep_frames=True"):
        bare.gradient()


@pytest.mark.slow
def test_example_quick(tmp_path, load_example):
    """examples/fit_binding.py --quick: one net-charge-preserving step toward the target, then a re-simulation."""
    import json

    example = load_example("fit_binding")
    summary = example.main(["--quick", "--out", str(tmp_path / "fit"), "--no-progress"])
    assert summary == json.loads((tmp_path / "fit" / "summary.json").read_text())
    before, after = np.array(summary["charges_before_e"]), np.array(summary["charges_after_e"])
    # a few charges moved, the net charge did not
    assert 0 < np.count_nonzero(np.abs(after - before) > 1e-12) <= 4
    assert summary["net_charge_after_e"] == pytest.approx(summary["net_charge_before_e"], abs=1e-9)
    # the frames' reweighted prediction at the new charges lies nearer the target than the start
    target = summary["target_kcal_per_mol"]
    start = summary["dg_before_kcal_per_mol"]
    assert abs(summary["predicted_after_kcal_per_mol"] - target) < abs(start - target)
    # the re-simulated dG at the new charges is reported with its error, and it is no further from the
    # target than the start by more than its 2-sigma (a gradient of the wrong sign lands ~2x the shift away);
    # measured: -17.32 +- 1.08 -> -14.19 +- 0.93 kcal/mol, target -15.32
    after, after_error = summary["dg_after_kcal_per_mol"], summary["dg_after_error_kcal_per_mol"]
    assert np.isfinite(after) and after_error > 0.0
    assert abs(after - target) < abs(start - target) + 2.0 * after_error
    first = summary["rounds"][0]
    assert first["dg_kcal_per_mol"] == start and len(first["gradient_kcal_per_mol_per_e"]) == len(before)
    for r in range(2):
        assert (tmp_path / "fit" / f"round-{r}" / "result.json").is_file()
