"""GB-OBC2 (+ OBC1, HCT) with the ACE surface term against OpenMM, and JAX behaviour.

OpenMM's numbers are computed at test time on the Reference platform (double precision):
``GBSAOBCForce`` for OBC2 (as ``AmberPrmtopFile.createSystem(implicitSolvent=OBC2)``
builds it) and the ``CustomGBForce`` recipes for OBC1 and HCT.
"""

from __future__ import annotations

import functools
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402

from diffmd.kernels import gb  # noqa: E402
from diffmd.kernels.errors import InputError  # noqa: E402
from diffmd.kernels.gb import born_radii, obc_energy, obc_energy_reference  # noqa: E402
from diffmd.kernels.neighbors import allocate_neighbors, dense_neighbors, exclusion_table  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "diffmd", "data")
SYSTEMS = {
    "alanine-dipeptide": ("alanine-dipeptide/alanine-dipeptide.prmtop", "alanine-dipeptide/alanine-dipeptide.crd"),
    "t4-ligand": ("t4-lysozyme-l99a/ligand.prmtop", "t4-lysozyme-l99a/ligand.crd"),
    "t4-receptor": ("t4-lysozyme-l99a/receptor.prmtop", "t4-lysozyme-l99a/receptor.crd"),
    "t4-complex": ("t4-lysozyme-l99a/complex.prmtop", "t4-lysozyme-l99a/complex.crd"),
}
GB_CONSTANTS = {"obc2": app.OBC2, "obc1": app.OBC1, "hct": app.HCT}
# OpenMM's 1/(4 pi eps0) from CODATA 2018 (SimTKOpenMMRealType.h), and the literal its
# CustomGBForce recipes use (customgbforces.py)
OPENMM_COULOMB = 1.0 / (4 * math.pi * 1e-6 * 8.8541878128e-12 / (1.602176634e-19**2 * 6.02214076e23))
CUSTOM_GB_COULOMB = 138.935485


def _value(v):
    return float(v.value_in_unit(v.unit)) if unit.is_quantity(v) else float(v)


def _read_prmtop_section(path, flag):
    """One numeric %FLAG section of a prmtop (E16.8 fields), independent of any loader."""
    with open(path) as fh:
        lines = fh.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["%FLAG", flag])
    values = []
    for line in lines[start + 2:]:
        if line.startswith("%"):
            break
        values.extend(float(line[k:k + 16]) for k in range(0, len(line.rstrip()), 16))
    return np.array(values)


@functools.lru_cache(maxsize=None)
def reference(name, cutoff=None, model="obc2", surface_area=True):
    """OpenMM's GB energy and forces, and the particle parameters it used (cached per case)."""
    prm_path, crd_path = (os.path.join(DATA, p) for p in SYSTEMS[name])
    prmtop = app.AmberPrmtopFile(prm_path)
    positions = np.asarray(app.AmberInpcrdFile(crd_path).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    kw = {"nonbondedMethod": app.NoCutoff}
    if cutoff is not None:
        kw = {"nonbondedMethod": app.CutoffNonPeriodic, "nonbondedCutoff": cutoff * unit.nanometer}
    with warnings.catch_warnings():  # OBC1/HCT warn about mbondi2 radii in an OBC2 prmtop
        warnings.simplefilter("ignore")
        system = prmtop.createSystem(implicitSolvent=GB_CONSTANTS[model], **kw)
    force = None
    for f in system.getForces():
        is_gb = isinstance(f, (openmm.GBSAOBCForce, openmm.CustomGBForce))
        f.setForceGroup(1 if is_gb else 0)
        force = f if is_gb else force
    n = force.getNumParticles()
    params = np.array([[_value(v) for v in force.getParticleParameters(i)] for i in range(n)])
    if isinstance(force, openmm.GBSAOBCForce):
        charges, radii, screen = params.T
        if not surface_area:
            force.setSurfaceAreaEnergy(0.0)
    else:  # CustomGBForce stores offset radius and scaled offset radius
        charges, offset_radii, scaled = params.T
        radii, screen = offset_radii + 0.009, scaled / offset_radii
        assert surface_area
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True, groups={1})
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    forces = np.asarray(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    del context
    return dict(positions=positions, charges=charges, radii=radii, screen=screen, energy=energy, forces=forces,
                prmtop=prm_path)


@functools.lru_cache(maxsize=None)
def table(name, cutoff=None):
    """GB neighbor table: every pair (no exclusions), all pairs or within cutoff + skin."""
    pos = reference(name)["positions"]
    n = len(pos)
    empty = exclusion_table(n, np.zeros((0, 2), int))
    if cutoff is None:
        return dense_neighbors(n, empty).idx
    return allocate_neighbors(pos, None, empty, cutoff, 0.1).idx


def energy_and_forces(fn, ref, idx, dtype=np.float64, accumulate=None, **kw):
    f = jax.jit(jax.value_and_grad(lambda x, q, r, s, i: fn(x, q, r, s, i, compute_dtype=dtype,
                                                            accumulate_dtype=accumulate, **kw)))
    args = (ref[k].astype(dtype) for k in ("positions", "charges", "radii", "screen"))
    e, g = f(*args, idx)
    return float(e), -np.asarray(g, np.float64)


def assert_forces_close(got, want, rel, what=""):
    err = np.sqrt(np.mean(np.sum((got - want) ** 2, axis=1)))
    rms = np.sqrt(np.mean(np.sum(want**2, axis=1)))
    assert err <= rel * rms, f"{what}: force RMS error {err:.3e} vs RMS force {rms:.3e} ({err / rms:.2e})"


def assert_energy_close(got, want, rel, what=""):
    assert abs(got - want) <= rel * abs(want), f"{what}: {got!r} vs OpenMM {want!r} ({abs(got - want) / abs(want):.2e})"


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_openmm_parameters_are_prmtop_radii_and_screen(name):
    ref = reference(name)
    np.testing.assert_allclose(ref["radii"], _read_prmtop_section(ref["prmtop"], "RADII") / 10, rtol=1e-12)
    np.testing.assert_allclose(ref["screen"], _read_prmtop_section(ref["prmtop"], "SCREEN"), rtol=1e-12)
    np.testing.assert_allclose(ref["charges"], _read_prmtop_section(ref["prmtop"], "CHARGE") / 18.2223, rtol=1e-12)


# ----------------------------------------------------------------------------- OpenMM agreement


FAST = [("alanine-dipeptide", None), ("alanine-dipeptide", 2.0), ("t4-ligand", None), ("t4-ligand", 2.0),
        ("t4-complex", None), ("t4-complex", 2.0)]
SLOW = [("t4-receptor", None), ("t4-receptor", 2.0)]


def _check_double(name, cutoff):
    ref = reference(name, cutoff)
    e, f = energy_and_forces(obc_energy, ref, table(name, cutoff), cutoff=cutoff)
    # the polar part and the ACE part separately (OpenMM with the surface term switched off)
    polar = reference(name, cutoff, surface_area=False)["energy"]
    parts = obc_energy(*(ref[k] for k in ("positions", "charges", "radii", "screen")), table(name, cutoff),
                       cutoff=cutoff, return_parts=True)
    assert_energy_close(float(parts[0]), polar, 1e-6, f"{name} polar")
    assert_energy_close(float(parts[1]), ref["energy"] - polar, 1e-9, f"{name} ACE")
    assert_energy_close(e, ref["energy"], 1e-6, f"{name} cutoff={cutoff}")
    assert_forces_close(f, ref["forces"], 1e-6, f"{name} cutoff={cutoff}")


@pytest.mark.parametrize("name,cutoff", FAST)
def test_obc2_matches_openmm_double(name, cutoff):
    _check_double(name, cutoff)


@pytest.mark.slow
@pytest.mark.parametrize("name,cutoff", SLOW)
def test_obc2_matches_openmm_double_t4l(name, cutoff):
    _check_double(name, cutoff)


@pytest.mark.parametrize("name,cutoff", [("alanine-dipeptide", None), ("t4-ligand", 2.0)])
def test_obc2_exact_with_openmm_coulomb_constant(name, cutoff, monkeypatch):
    """With OpenMM's own 1/(4 pi eps0) the formulas agree to rounding, not just to 1e-6."""
    monkeypatch.setattr(gb, "COULOMB", OPENMM_COULOMB)
    ref = reference(name, cutoff)
    e, f = energy_and_forces(obc_energy, ref, table(name, cutoff), cutoff=cutoff)
    assert_energy_close(e, ref["energy"], 1e-11, name)
    assert_forces_close(f, ref["forces"], 1e-11, name)


@pytest.mark.parametrize("model", ["obc1", "hct"])
@pytest.mark.parametrize("cutoff", [None, 1.0])
def test_obc1_hct_match_openmm_custom_gb(model, cutoff, monkeypatch):
    ref = reference("alanine-dipeptide", cutoff, model=model)
    idx = table("alanine-dipeptide", cutoff)
    e, f = energy_and_forces(obc_energy, ref, idx, cutoff=cutoff, model=model)
    assert_energy_close(e, ref["energy"], 1e-6, model)
    assert_forces_close(f, ref["forces"], 1e-6, model)
    # the recipe's literals: its Coulomb constant and 4 pi sigma rounded to 28.3919551
    monkeypatch.setattr(gb, "COULOMB", CUSTOM_GB_COULOMB)
    e, f = energy_and_forces(obc_energy, ref, idx, cutoff=cutoff, model=model,
                             surface_tension=28.3919551 / (4 * math.pi))
    assert_energy_close(e, ref["energy"], 1e-11, model)
    assert_forces_close(f, ref["forces"], 1e-11, model)


def _check_float32(name, cutoff, accumulate):
    ref = reference(name, cutoff)
    e, f = energy_and_forces(obc_energy, ref, table(name, cutoff), dtype=np.float32, accumulate=accumulate,
                             cutoff=cutoff)
    assert_energy_close(e, ref["energy"], 1e-4, f"{name} float32")
    assert_forces_close(f, ref["forces"], 1e-4, f"{name} float32")


@pytest.mark.parametrize("accumulate", [np.float32, np.float64], ids=["single", "mixed"])
@pytest.mark.parametrize("name,cutoff", [("alanine-dipeptide", None), ("t4-ligand", 2.0)])
def test_obc2_matches_openmm_float32(name, cutoff, accumulate):
    _check_float32(name, cutoff, accumulate)


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [np.float32, np.float64], ids=["single", "mixed"])
@pytest.mark.parametrize("cutoff", [None, 2.0])
def test_obc2_matches_openmm_float32_t4l(cutoff, accumulate):
    _check_float32("t4-complex", cutoff, accumulate)


def _periodic_reference(box, cutoff):
    """Alanine dipeptide in a periodic cell, straddling a corner so minimum images matter."""
    ref = reference("alanine-dipeptide")
    system = openmm.System()
    force = openmm.GBSAOBCForce()
    force.setSolventDielectric(78.5)
    force.setNonbondedMethod(openmm.GBSAOBCForce.CutoffPeriodic)
    force.setCutoffDistance(cutoff)
    for q, r, s in zip(ref["charges"], ref["radii"], ref["screen"]):
        system.addParticle(1.0)
        force.addParticle(q, r, s)
    system.addForce(force)
    system.setDefaultPeriodicBoxVectors(*box)
    pos = ref["positions"] - ref["positions"].mean(0)  # centered on the origin: a corner of the cell
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(pos)
    state = context.getState(getEnergy=True, getForces=True)
    return pos, state.getPotentialEnergy()._value, state.getForces(asNumpy=True)._value


@pytest.mark.parametrize("box", [np.diag([2.4, 2.5, 2.6]), np.array([[2.4, 0, 0], [0.3, 2.5, 0], [-0.4, 0.5, 2.6]])],
                         ids=["orthorhombic", "triclinic"])
def test_obc2_periodic_matches_openmm(box):
    cutoff = 0.9
    pos, e_ref, f_ref = _periodic_reference(box, cutoff)
    ref = reference("alanine-dipeptide")
    n = len(pos)
    idx = allocate_neighbors(pos, box, exclusion_table(n, np.zeros((0, 2), int)), cutoff, 0.1).idx
    energy = jax.jit(lambda x, b: obc_energy(x, ref["charges"], ref["radii"], ref["screen"], idx, box=b,
                                             cutoff=cutoff))
    e, (g, g_box) = jax.jit(jax.value_and_grad(energy, argnums=(0, 1)))(pos, jnp.asarray(box))
    assert_energy_close(float(e), e_ref, 1e-6, "periodic")
    assert_forces_close(-np.asarray(g), f_ref, 1e-6, "periodic")
    # box gradient (through the minimum image) against a central difference
    h = 1e-6
    d = np.zeros((3, 3))
    d[2, 0] = h
    fd = (energy(pos, jnp.asarray(box + d)) - energy(pos, jnp.asarray(box - d))) / (2 * h)
    np.testing.assert_allclose(float(g_box[2, 0]), float(fd), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- analytic edge cases


def test_isolated_ion_born_radius_and_energy():
    """One atom: B = rho - offset, E = -COULOMB/2 (1 - 1/eps) q^2 / B + ACE."""
    idx = dense_neighbors(1, exclusion_table(1, np.zeros((0, 2), int))).idx
    pos, q, rho, s = np.zeros((1, 3)), np.array([-1.0]), np.array([0.17]), np.array([0.8])
    b = rho - 0.009
    np.testing.assert_allclose(born_radii(pos, rho, s, idx), b, rtol=1e-14)
    polar, nonpolar = obc_energy(pos, q, rho, s, idx, return_parts=True)
    np.testing.assert_allclose(polar, -0.5 * gb.COULOMB * (1 - 1 / 78.5) / b[0], rtol=1e-14)
    np.testing.assert_allclose(nonpolar, 4 * np.pi * 2.25936 * (0.17 + 0.14) ** 2 * (0.17 / b[0]) ** 6, rtol=1e-14)
    assert float(obc_energy(pos, q, rho, s, idx, surface_tension=None)) == pytest.approx(float(polar), rel=1e-15)


def test_options_are_validated():
    ref = reference("alanine-dipeptide")
    args = (ref["positions"], ref["charges"], ref["radii"], ref["screen"], table("alanine-dipeptide"))
    with pytest.raises(InputError, match="unknown GB model"):
        obc_energy(*args, model="gbn2")
    with pytest.raises(InputError, match="needs a cutoff"):
        obc_energy(*args, box=np.eye(3) * 3.0)
    with pytest.raises(InputError, match="cutoff must be positive"):
        obc_energy(*args, cutoff=0.0)
    # the OBC constants can be given directly
    e_named = obc_energy(*args, model="obc1")
    np.testing.assert_allclose(obc_energy(*args, model=(0.8, 0.0, 2.909125)), e_named, rtol=1e-15)


# ----------------------------------------------------------------------------- JAX behaviour


@pytest.fixture(scope="module")
def ala():
    ref = reference("alanine-dipeptide")
    return ref, table("alanine-dipeptide"), table("alanine-dipeptide", 1.0)


@pytest.mark.parametrize("cutoff", [None, 1.0])
def test_fast_forces_and_gradients_equal_reference(ala, cutoff):
    """The hand-written position derivative equals autodiff of the plain energy, per part."""
    ref, dense, cut = ala
    idx = dense if cutoff is None else cut
    args = (ref["positions"], ref["charges"], ref["radii"], ref["screen"])
    def all_grads(fn):
        def parts(*a):
            return fn(*a, idx, cutoff=cutoff, return_parts=True)

        return jax.jit(lambda *a: [jax.grad(lambda *b: parts(*b)[k], argnums=(0, 1, 2, 3))(*a) for k in (0, 1)])

    got, want = all_grads(obc_energy)(*args), all_grads(obc_energy_reference)(*args)
    for got_part, want_part in zip(got, want):  # polar, then ACE
        for g, w in zip(got_part, want_part):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10 * np.abs(w).max())


def test_chunking_does_not_change_results(ala):
    ref, dense, _ = ala
    args = (ref["positions"], ref["charges"], ref["radii"], ref["screen"], dense)
    e, g = jax.jit(jax.value_and_grad(obc_energy))(*args)
    for chunk in (1, 7):  # 22 atoms: one row per chunk, and ragged chunks
        e_c, g_c = jax.jit(jax.value_and_grad(lambda *a: obc_energy(*a, chunk_size=chunk)))(*args)
        np.testing.assert_allclose(e_c, e, rtol=1e-13)
        np.testing.assert_allclose(g_c, g, rtol=1e-11, atol=1e-11)


def test_jit_equals_eager(ala):
    ref, _, cut = ala  # eager runs op by op (slow to dispatch): keep it to one call
    args = (ref["positions"], ref["charges"], ref["radii"], ref["screen"], cut)
    fn = jax.value_and_grad(lambda *a: obc_energy(*a, cutoff=1.0))
    e0, g0 = fn(*args)
    e1, g1 = jax.jit(fn)(*args)
    np.testing.assert_allclose(e1, e0, rtol=1e-13)
    np.testing.assert_allclose(g1, g0, rtol=1e-11, atol=1e-11)


def test_vmap_over_conformations_equals_loop(ala):
    ref, dense, _ = ala
    rng = np.random.default_rng(0)
    confs = ref["positions"][None] + 0.01 * rng.standard_normal((2,) + ref["positions"].shape)

    def energy_forces(x):
        return jax.value_and_grad(obc_energy)(x, ref["charges"], ref["radii"], ref["screen"], dense)

    e_v, g_v = jax.jit(jax.vmap(energy_forces))(confs)
    one = jax.jit(energy_forces)
    for k in range(2):
        e_k, g_k = one(confs[k])
        np.testing.assert_allclose(e_v[k], e_k, rtol=1e-13)
        np.testing.assert_allclose(g_v[k], g_k, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("name,cutoff", [("t4-ligand", None), ("alanine-dipeptide", 1.0)])
def test_parameter_gradients_match_finite_differences(name, cutoff):
    ref = reference(name)
    idx = table(name, cutoff)
    rng = np.random.default_rng(1)
    args = [ref["positions"], ref["charges"], ref["radii"], ref["screen"]]
    energy = jax.jit(lambda *a: obc_energy(*a, idx, cutoff=cutoff))
    grads = jax.jit(jax.grad(energy, argnums=(0, 1, 2, 3)))(*args)
    # directional derivatives along random directions: positions, charges, radii, screen
    for which, h in ((0, 1e-6), (1, 1e-6), (2, 1e-7), (3, 1e-6)):
        v = rng.standard_normal(args[which].shape)
        plus = [a + h * v if k == which else a for k, a in enumerate(args)]
        minus = [a - h * v if k == which else a for k, a in enumerate(args)]
        fd = (float(energy(*plus)) - float(energy(*minus))) / (2 * h)
        np.testing.assert_allclose(float(np.sum(np.asarray(grads[which]) * v)), fd, rtol=1e-6, atol=1e-7,
                                   err_msg=f"argument {which}")


def test_float32_inputs_stay_float32(ala):
    ref, dense, _ = ala
    args = [ref[k].astype(np.float32) for k in ("positions", "charges", "radii", "screen")]
    e, g = jax.jit(jax.value_and_grad(obc_energy))(*args, dense)
    assert e.dtype == jnp.float32 and g.dtype == jnp.float32
    e64 = jax.jit(lambda *a: obc_energy(*a, accumulate_dtype=np.float64))(*args, dense)
    assert e64.dtype == jnp.float64


def test_gradients_of_forces_equal_reference(ala):
    """Reverse over reverse (force matching): d(F . v)/d(positions, charges, radii, screen)."""
    ref, dense, _ = ala
    args = tuple(ref[k] for k in ("positions", "charges", "radii", "screen"))
    v = np.random.default_rng(2).standard_normal(args[0].shape)

    def through_forces(fn):
        def f_dot_v(*a):
            return jnp.vdot(v, jax.grad(fn)(*a, dense))

        return jax.jit(jax.grad(f_dot_v, argnums=(0, 1, 2, 3)))(*args)

    for got, want in zip(through_forces(obc_energy), through_forces(obc_energy_reference)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


@pytest.mark.parametrize("model", ["obc2", "hct"])
def test_radius_zero_atoms_are_absent(model):
    """Padding atoms (radius 0, charge 0) change neither the energy nor any real atom's force."""
    rng = np.random.default_rng(5)
    n, pad = 12, 3
    pos = rng.uniform(0.0, 1.2, (n, 3))
    q = rng.normal(0.0, 0.4, n)
    radii, screen = rng.uniform(0.12, 0.2, n), rng.uniform(0.7, 0.9, n)
    # padding near the molecule too (not only far away): radius 0 must switch the atom off
    pos_p = np.concatenate([pos, pos[:pad] + 0.3])
    q_p, radii_p, screen_p = (np.concatenate([a, np.zeros(pad)]) for a in (q, radii, screen))
    kw = dict(model=model)
    ref, g_ref = jax.value_and_grad(obc_energy)(pos, q, radii, screen, dense_neighbors(n, exclusion_table(n, [])).idx,
                                                **kw)
    table = dense_neighbors(n + pad, exclusion_table(n + pad, [])).idx
    for fn in (obc_energy, obc_energy_reference):
        e, g = jax.value_and_grad(fn)(pos_p, q_p, radii_p, screen_p, table, **kw)
        assert abs(float(e) - float(ref)) <= 1e-12 * abs(float(ref))
        np.testing.assert_allclose(np.asarray(g[:n]), np.asarray(g_ref), atol=1e-10)
        assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.slow  # 25-110 s on 2 cores: CI's slow stage runs it (default suite < 15 min)
def test_all_pairs_without_a_table_equals_the_dense_table(ala):
    """neighbors_idx=None (no cutoff) reads partners as contiguous rows: same energy, forces and
    parameter gradients as the (N, N - 1) table, for the fast kernel, its reference, Born radii and vmap."""
    ref, dense, _ = ala
    args = (ref["positions"], ref["charges"], ref["radii"], ref["screen"])
    for fn in (obc_energy, obc_energy_reference):
        for chunk in (128, 7):  # one chunk, and ragged chunks
            def grads(idx, fn=fn, chunk=chunk):
                return jax.jit(jax.value_and_grad(lambda *a: fn(*a, idx, chunk_size=chunk), argnums=(0, 1, 2, 3)))(*args)

            (e_all, g_all), (e_tab, g_tab) = grads(None), grads(dense)
            np.testing.assert_allclose(e_all, e_tab, rtol=1e-13)
            for a, b in zip(g_all, g_tab):
                np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11 * np.abs(b).max())
    np.testing.assert_allclose(born_radii(ref["positions"], ref["radii"], ref["screen"], None),
                               born_radii(ref["positions"], ref["radii"], ref["screen"], dense), rtol=1e-13)
    frames = np.stack([ref["positions"], ref["positions"] * 1.01])
    batched = jax.vmap(lambda x: obc_energy(x, *args[1:], None))(frames)
    np.testing.assert_allclose(batched, [obc_energy(x, *args[1:], dense) for x in frames], rtol=1e-13)


def test_all_pairs_needs_no_cutoff(ala):
    ref, _, _ = ala
    with pytest.raises(ValueError, match="only applies without a cutoff"):
        obc_energy(ref["positions"], ref["charges"], ref["radii"], ref["screen"], None, cutoff=1.0)


@pytest.mark.parametrize("table", [False, True])
def test_absent_atoms_feel_exactly_no_force(table):
    """Atoms of radius 0 and charge 0 (a padded ensemble member's padding) are absent from GB: they
    neither descreen nor feel a force, exactly (their terms cancel only up to rounding otherwise)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(np.concatenate([rng.normal(size=(5, 3)) * 0.3, [[1000.0, 0.0, 0.0], [1002.0, 0.0, 0.0]]]))
    q = jnp.asarray([0.3, -0.3, 0.2, -0.1, -0.1, 0.0, 0.0])
    radii = jnp.asarray([0.15] * 5 + [0.0, 0.0])
    screen = jnp.asarray([0.8] * 5 + [0.0, 0.0])
    idx = None
    if table:  # every pair, padding atoms included, as a dense table lists them
        idx = jnp.asarray([[j for j in range(7) if j != i] for i in range(7)], jnp.int32)
    forces = -jax.grad(lambda p: obc_energy(p, q, radii, screen, idx))(x)
    assert np.all(np.asarray(forces[5:]) == 0.0)
    alone = -jax.grad(lambda p: obc_energy(p, q[:5], radii[:5], screen[:5], None))(x[:5])
    np.testing.assert_allclose(np.asarray(forces[:5]), np.asarray(alone), rtol=1e-12, atol=1e-12)
