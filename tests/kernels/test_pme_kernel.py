"""Smooth PME electrostatics (kernels/pme.py) against OpenMM's Reference platform, computed at test time.

Each system is built by OpenMM's Amber loader with PME (ewaldErrorTolerance 5e-4), all Lennard-Jones
switched off (particle and exception epsilons zeroed) and no dispersion correction, so OpenMM's
NonbondedForce holds electrostatics only. OpenMM reports the reciprocal-space group as
reciprocal + self + neutralizing and the direct group as direct + exclusion correction + the
exceptions' plain Coulomb (charge products already scaled by 1/1.2); the tests rebuild both groups.
"""

import itertools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erfc
from conftest import DATA, assert_energy_close, assert_forces_close
from openmm_reference import dhfr_files

from diffmd.kernels import pme
from diffmd.kernels.constants import COULOMB
from diffmd.kernels.errors import InputError
from diffmd.kernels.neighbors import allocate_neighbors, exclusion_table

openmm = pytest.importorskip("openmm")
from openmm import app, unit  # noqa: E402


FILES = {
    "alanine-explicit": (os.path.join(DATA, "alanine-dipeptide-explicit", "alanine-dipeptide.prmtop"),
                         os.path.join(DATA, "alanine-dipeptide-explicit", "alanine-dipeptide.crd")),
    "cb7-b2-explicit": (os.path.join(DATA, "cb7-b2", "complex-explicit.prmtop"),
                        os.path.join(DATA, "cb7-b2", "complex-explicit.inpcrd")),
    "watbox216": (os.path.join(DATA, "waterbox", "watbox216.prmtop"), os.path.join(DATA, "waterbox", "watbox216.crd")),
}
_CACHE = {}


def build(name, cutoff, net_charge_shift=0.0, platform="Reference"):
    """OpenMM electrostatics-only PME system and its reference numbers (cached).

    ``net_charge_shift`` [e] is spread evenly over the guest residue (B2) to make a charged system.
    """
    key = (name, cutoff, net_charge_shift, platform)
    if key in _CACHE:
        return _CACHE[key]
    files = dhfr_files() if name == "dhfr" else FILES[name]
    prmtop, inpcrd = app.AmberPrmtopFile(files[0]), app.AmberInpcrdFile(files[1])
    box = np.array([[c.value_in_unit(unit.nanometer) for c in v] for v in inpcrd.getBoxVectors()])
    # OpenMM sizes the PME grid from the System's default box: make it the coordinate file's box
    prmtop.topology.setPeriodicBoxVectors(box)
    system = prmtop.createSystem(nonbondedMethod=app.PME, nonbondedCutoff=cutoff * unit.nanometer,
                                 ewaldErrorTolerance=5e-4)
    for i in reversed(range(system.getNumForces())):
        if not isinstance(system.getForce(i), openmm.NonbondedForce):
            system.removeForce(i)
    force = system.getForce(0)
    force.setUseDispersionCorrection(False)
    force.setReciprocalSpaceForceGroup(1)
    n_atoms = force.getNumParticles()
    guest = [a.index for a in prmtop.topology.atoms() if a.residue.name == "B2"]
    charges = np.zeros(n_atoms)
    for i in range(n_atoms):
        q, sigma, _ = force.getParticleParameters(i)
        q = q.value_in_unit(unit.elementary_charge) + (net_charge_shift / len(guest) if i in guest else 0.0)
        charges[i] = q
        force.setParticleParameters(i, q, sigma, 0.0)
    pairs, charge_prods = [], []
    for k in range(force.getNumExceptions()):
        i, j, qq, sigma, _ = force.getExceptionParameters(k)
        pairs.append((i, j))
        charge_prods.append(qq.value_in_unit(unit.elementary_charge**2))
        force.setExceptionParameters(k, i, j, qq, sigma, 0.0)
    positions = inpcrd.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    context = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName(platform))
    context.setPositions(positions)
    ref = {}
    for label, group in (("direct", {0}), ("reciprocal", {1})):
        state = context.getState(getEnergy=True, getForces=True, groups=group)
        ref[label] = (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                      state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    ref["params"] = force.getPMEParametersInContext(context)
    alpha_set, *grid_set = force.getPMEParameters()
    ref["params_before_context"] = [alpha_set.value_in_unit(unit.nanometer**-1), *grid_set]
    del context
    data = dict(positions=np.asarray(positions), box=box, charges=charges, pairs=np.array(pairs),
                charge_prods=np.array(charge_prods), cutoff=cutoff, ref=ref)
    _CACHE[key] = data
    return data


def neighbors_for(data, skin=0.1):
    """The direct-space table (cached with the system: building it compiles)."""
    if "neighbors" not in data:
        n_atoms = len(data["charges"])
        data["neighbors"] = allocate_neighbors(data["positions"], data["box"],
                                               exclusion_table(n_atoms, data["pairs"]), data["cutoff"], skin)
    return data["neighbors"]


def coulomb14(positions, pairs, charge_prods):
    """The exceptions' plain Coulomb (OpenMM computes 1-4 pairs this way, without periodicity)."""
    dr = positions[pairs[:, 1]] - positions[pairs[:, 0]]
    return COULOMB * jnp.sum(charge_prods / jnp.sqrt(jnp.sum(dr * dr, axis=1)))


def groups(data, nbrs, positions=None, dtype=jnp.float64, idx=None, **kw):
    """Energies of OpenMM's direct and reciprocal force groups, and the parts."""
    x = jnp.asarray(data["positions"] if positions is None else positions, dtype)
    alpha, grid = pme.pme_parameters(data["box"], data["cutoff"])
    parts = pme.pme_energy(x, jnp.asarray(data["charges"], dtype), jnp.asarray(data["box"], dtype),
                           nbrs.idx if idx is None else idx, data["pairs"], alpha, grid, data["cutoff"], **kw)
    direct = parts["direct"] + parts["exclusion"] + coulomb14(x, data["pairs"], jnp.asarray(data["charge_prods"]))
    reciprocal = parts["reciprocal"] + parts["self"] + parts["neutralizing"]
    return direct, reciprocal, parts


def check_against_openmm(data, rel=1e-10):
    nbrs = neighbors_for(data)
    alpha, grid = pme.pme_parameters(data["box"], data["cutoff"])
    omm_alpha, *omm_grid = data["ref"]["params"]
    assert alpha == pytest.approx(omm_alpha, rel=1e-14) and list(grid) == omm_grid
    assert data["ref"]["params_before_context"] == [0.0, 0, 0, 0]  # OpenMM chose them from the tolerance

    @jax.jit
    def both(x, idx):  # the table as an argument: as a constant XLA would fold it at length
        return [jax.value_and_grad(lambda x, i=i: groups(data, nbrs, x, idx=idx)[i])(x) for i in (0, 1)]

    for (energy, grad), label in zip(both(jnp.asarray(data["positions"]), nbrs.idx), ("direct", "reciprocal")):
        want_energy, want_forces = data["ref"][label]
        assert_energy_close(energy, want_energy, rel, what=label)
        assert_forces_close(-np.asarray(grad), want_forces, rel, what=label)
    return nbrs


# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------


def _factors(n):
    out, f = [], 2
    while f * f <= n:
        while n % f == 0:
            out.append(f)
            n //= f
        f += 1
    return out + ([n] if n > 1 else [])


@pytest.mark.parametrize("rule", ["cpu", "gpu"])
def test_legal_fft_sizes_are_smallest_with_small_factors(rule):
    def legal(n):
        big = [f for f in _factors(n) if f > 7]
        return not big or (rule == "cpu" and big == [11])

    for minimum in range(1, 300):
        size = pme.legal_fft_size(minimum, rule)
        assert size >= minimum and legal(size), (minimum, size)
        assert not any(legal(m) for m in range(minimum, size)), (minimum, size)
    assert pme.legal_fft_size(53, "reference") == 53
    assert pme.legal_fft_size(55, "cpu") == 55 and pme.legal_fft_size(55, "gpu") == 56


def test_parameter_overrides_and_errors():
    box = np.diag([3.0, 3.2, 3.4])
    alpha, grid = pme.pme_parameters(box, 0.9)
    assert alpha == pytest.approx(math.sqrt(-math.log(1e-3)) / 0.9)
    assert pme.pme_parameters(box, 0.9, alpha=3.5)[0] == 3.5
    assert pme.pme_parameters(box, 0.9, alpha=3.5)[1] != grid  # the grid follows a user alpha
    assert pme.pme_parameters(box, 0.9, grid=(32, 32, 40)) == (alpha, (32, 32, 40))
    assert all(n >= 6 for n in pme.pme_parameters(np.eye(3), 0.4, tolerance=0.4)[1])
    for bad in (dict(cutoff=0.0), dict(tolerance=0.0), dict(tolerance=0.7), dict(grid=(4, 30, 30)),
                dict(alpha=-1.0)):
        args = dict(cutoff=0.9) | bad
        with pytest.raises(InputError):
            pme.pme_parameters(box, **args)
    with pytest.raises(InputError):
        pme.legal_fft_size(30, "fast")


def test_bspline_moduli_are_the_spline_transform():
    # |sum_j M5(j+1) e^{2 pi i k j / n}|^2 with M5 at 1..4 = 1/24, 11/24, 11/24, 1/24; it vanishes at
    # the Nyquist index of an even grid, where OpenMM uses the mean of the neighbours instead
    for n in (15, 16):
        m5 = np.zeros(n)
        m5[:4] = np.array([1, 11, 11, 1]) / 24
        want = np.abs(np.fft.fft(m5)) ** 2
        if n % 2 == 0:
            assert want[n // 2] < 1e-20
            want[n // 2] = 0.5 * (want[n // 2 - 1] + want[n // 2 + 1])
        np.testing.assert_allclose(pme.bspline_moduli(n), want, rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------------------------
# against OpenMM
# ----------------------------------------------------------------------------------------------


def test_alanine_dipeptide_explicit_matches_openmm():
    check_against_openmm(build("alanine-explicit", 0.9))


def test_charged_cb7_complex_matches_openmm_with_neutralizing_term():
    # the bundled box is neutral (net charge -0.002 e); shifting +2 e onto the guest makes the
    # neutralizing-plasma term -1.6 kJ/mol (5e-6 of the reciprocal group, far above the tolerance)
    data = build("cb7-b2-explicit", 0.9, net_charge_shift=2.0)
    assert abs(data["charges"].sum() - 2.0) < 0.01
    nbrs = check_against_openmm(data)
    _, _, parts = groups(data, nbrs)
    neutral = float(parts["neutralizing"])
    assert neutral < -1.0
    reference = data["ref"]["reciprocal"][0]
    isolated = reference - float(parts["reciprocal"]) - float(parts["self"])
    assert isolated == pytest.approx(neutral, abs=1e-10 * abs(reference))


def test_triclinic_waterbox_matches_openmm():
    # OpenMM's Reference voxel neighbor list misses a few pairs of this skewed 0.98 nm-high box
    # at cutoffs near the half height (its CPU platform and a brute-force sum agree with diffmd);
    # 0.3 nm is short enough for the Reference list to be complete
    check_against_openmm(build("watbox216", 0.3))


def test_triclinic_direct_sum_near_half_box_matches_brute_force():
    data = build("watbox216", 0.45)
    nbrs = neighbors_for(data)
    alpha, _ = pme.pme_parameters(data["box"], 0.45)
    got = pme.pme_direct_energy(jnp.asarray(data["positions"]), jnp.asarray(data["charges"]),
                                jnp.asarray(data["box"]), nbrs.idx, alpha, 0.45)
    pos, box, q = data["positions"], data["box"], data["charges"]
    excluded = {tuple(p) for p in np.sort(data["pairs"], axis=1)}
    shifts = np.array([i * box[0] + j * box[1] + k * box[2] for i, j, k in itertools.product(range(-2, 3), repeat=3)])
    want = 0.0
    for i in range(len(q) - 1):
        # true nearest image over 125 cells, independent of the reduced-box recipe
        r = np.min(np.linalg.norm(pos[i + 1:, None, :] - pos[i] + shifts[None], axis=-1), axis=1)
        js = np.arange(i + 1, len(q))
        keep = (r < 0.45) & np.array([(i, j) not in excluded for j in js])
        want += COULOMB * np.sum(q[i] * q[js[keep]] * erfc(alpha * r[keep]) / r[keep])
    assert_energy_close(got, want, 1e-12, what="direct, brute force")


@pytest.mark.slow
def test_dhfr_matches_openmm():
    data = build("dhfr", 0.9)
    assert abs(data["charges"].sum() + 11.0) < 1e-3
    check_against_openmm(data)


# ----------------------------------------------------------------------------------------------
# precision, jit, vmap
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["mixed", "single"])
def test_reduced_precision_within_1e4(precision):
    data = build("alanine-explicit", 0.9)
    nbrs = neighbors_for(data)

    def evaluate(x, idx, dtype=jnp.float64, **kw):
        def total(x):
            direct, reciprocal, parts = groups(data, nbrs, x, dtype=dtype, idx=idx, **kw)
            return direct + reciprocal, parts
        (energy, parts), grad = jax.value_and_grad(total, has_aux=True)(x)
        return energy, grad, parts

    if "double" not in _CACHE:
        _CACHE["double"] = jax.jit(evaluate)(jnp.asarray(data["positions"]), nbrs.idx)
    e64, g64, parts64 = _CACHE["double"]
    if precision == "mixed":
        kw, dtype = dict(compute_dtype=jnp.float32, accumulate_dtype=jnp.float64), jnp.float64
    else:
        kw, dtype = dict(compute_dtype=jnp.float32), jnp.float32
    x = jnp.asarray(data["positions"], dtype)
    energy, grad, parts = jax.jit(lambda x, idx: evaluate(x, idx, dtype, **kw))(x, nbrs.idx)
    assert grad.dtype == dtype
    assert_energy_close(energy, e64, 1e-4, what=precision)
    assert_forces_close(grad, g64, 1e-4, what=precision)
    for key in ("direct", "reciprocal", "self", "exclusion"):
        assert_energy_close(parts[key], parts64[key], 1e-5, what=key)


def test_jit_matches_eager_and_vmap_matches_loop():
    data = build("watbox216", 0.3)
    nbrs = neighbors_for(data)
    alpha, grid = pme.pme_parameters(data["box"], 0.3)
    q, box = jnp.asarray(data["charges"]), jnp.asarray(data["box"])

    def total(x):
        return sum(pme.pme_energy(x, q, box, nbrs.idx, data["pairs"], alpha, grid, 0.3).values())

    x0 = jnp.asarray(data["positions"])
    x1 = x0 + 0.01 * jax.random.normal(jax.random.PRNGKey(0), x0.shape, x0.dtype)
    single = jax.jit(jax.value_and_grad(total))
    eager = jax.value_and_grad(total)(x0)
    np.testing.assert_allclose(single(x0)[0], eager[0], rtol=1e-12)
    np.testing.assert_allclose(single(x0)[1], eager[1], rtol=1e-9, atol=1e-9)
    energies, grads = jax.jit(jax.vmap(jax.value_and_grad(total)))(jnp.stack([x0, x1]))
    for k, x in enumerate((x0, x1)):
        e, g = single(x)
        np.testing.assert_allclose(energies[k], e, rtol=1e-12)
        np.testing.assert_allclose(grads[k], g, rtol=1e-9, atol=1e-9)
    assert abs(float(energies[0] - energies[1])) > 1.0  # the two conformations really differ


# ----------------------------------------------------------------------------------------------
# derivatives
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    data = build("watbox216", 0.3)
    nbrs = neighbors_for(data)
    alpha, grid = pme.pme_parameters(data["box"], 0.3)
    # a charged system, so the neutralizing term and its box derivative take part
    charges = jnp.asarray(data["charges"]).at[:3].add(0.3)

    def total(x, q, box, a, custom=True):
        parts = pme.pme_energy(x, q, box, nbrs.idx, data["pairs"], a, grid, 0.3, custom_gradients=custom)
        return sum(parts.values())

    args = (jnp.asarray(data["positions"]), charges, jnp.asarray(data["box"]), jnp.asarray(alpha))
    return total, args, jax.jit(jax.grad(total, argnums=(0, 1, 2, 3)))


def test_written_out_derivatives_equal_autodiff(small):
    total, args, grad = small
    custom = grad(*args)
    plain = jax.jit(jax.grad(lambda *a: total(*a, custom=False), argnums=(0, 1, 2, 3)))(*args)
    for name, c, p in zip(("positions", "charges", "box", "alpha"), custom, plain):
        scale = float(jnp.max(jnp.abs(p)))
        assert float(jnp.max(jnp.abs(c - p))) <= 1e-11 * scale, name
    assert np.all(np.triu(np.asarray(custom[2]), 1) == 0)  # the upper triangle is not read


def test_second_derivatives_equal_autodiff(small):
    # training through dynamics differentiates forces: reverse over the written-out rules
    total, (x, q, box, alpha), _ = small
    v = jax.random.normal(jax.random.PRNGKey(1), x.shape, x.dtype)

    def hvp(custom):
        def force_dot_v(x, q, box):
            return jnp.vdot(jax.grad(total)(x, q, box, alpha, custom), v)
        return jax.jit(jax.grad(force_dot_v, argnums=(0, 1, 2)))(x, q, box)

    for name, c, p in zip(("positions", "charges", "box"), hvp(True), hvp(False)):
        assert float(jnp.max(jnp.abs(c - p))) <= 1e-11 * float(jnp.max(jnp.abs(p))), name


def _central(f, x, index, h):
    return (f(x.at[index].add(h)) - f(x.at[index].add(-h))) / (2 * h)


def test_gradients_match_finite_differences(small):
    total, (x, q, box, alpha), grad = small
    grads = grad(x, q, box, alpha)
    energy = jax.jit(total)  # one compilation serves every finite difference
    for index in [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]:
        fd = _central(lambda b: energy(x, q, b, alpha), box, index, 1e-5)
        assert float(grads[2][index]) == pytest.approx(float(fd), rel=1e-6, abs=1e-3), index
    for i in (0, 1, 100, 647):
        fd = _central(lambda c: energy(x, c, box, alpha), q, i, 1e-5)
        assert float(grads[1][i]) == pytest.approx(float(fd), rel=1e-7, abs=1e-5), i
    for index in [(0, 0), (1, 2), (300, 1), (647, 0)]:
        fd = _central(lambda p: energy(p, q, box, alpha), x, index, 1e-6)
        assert float(grads[0][index]) == pytest.approx(float(fd), rel=1e-6, abs=1e-3), index
    fd = (energy(x, q, box, alpha + 1e-5) - energy(x, q, box, alpha - 1e-5)) / 2e-5
    assert float(grads[3]) == pytest.approx(float(fd), rel=1e-5, abs=1e-6)


@jax.jit
def _exclusion_pair(x, q, box, alpha):
    return jax.value_and_grad(pme.pme_exclusion_correction)(x, q, box, jnp.array([[0, 1]]), alpha)


def test_exclusion_correction_keeps_float32_accuracy_at_bonded_distances():
    # two atoms 0.05-0.4 nm apart: value and force in float32 against float64
    alpha = 3.12
    box = jnp.eye(3) * 3.0
    q = jnp.array([0.8, -0.9])
    # (below ~0.05 nm float32 positions themselves, not the kernel, limit the accuracy)
    for r in (0.05, 0.1, 0.16, 0.4, 1.0):
        e = {}
        for dtype in (jnp.float32, jnp.float64):
            x = jnp.array([[1.0, 1.0, 1.0], [1.0 + r * 0.6, 1.0 + r * 0.8, 1.0]], dtype)
            e[dtype] = _exclusion_pair(x, q.astype(dtype), box.astype(dtype), alpha)
        assert float(e[jnp.float32][0]) == pytest.approx(float(e[jnp.float64][0]), rel=5e-7)
        want = np.asarray(e[jnp.float64][1])
        assert np.max(np.abs(np.asarray(e[jnp.float32][1]) - want)) <= 2e-6 * np.max(np.abs(want)), r
        x2 = alpha * r
        exact = -COULOMB * 0.8 * -0.9 * math.erf(x2) / r
        assert float(e[jnp.float64][0]) == pytest.approx(exact, rel=1e-14)
    # coincident atoms: the finite limit and a finite gradient
    value, grad = _exclusion_pair(jnp.ones((2, 3)), q, box, alpha)
    assert float(value) == pytest.approx(COULOMB * 0.72 * 2 * alpha / math.sqrt(math.pi), rel=1e-14)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_padding_rows_and_columns_change_nothing(small):
    total, (x, q, box, alpha), _ = small
    data = build("watbox216", 0.3)
    nbrs = neighbors_for(data)
    n = len(q)
    _, grid = pme.pme_parameters(data["box"], 0.3)
    wide = jnp.concatenate([nbrs.idx, jnp.full((n, 7), n, jnp.int32)], axis=1)
    padded_pairs = np.concatenate([data["pairs"], np.full((5, 2), n)])
    energy = jax.jit(pme.pme_energy, static_argnums=(6, 7))
    a = energy(x, q, box, nbrs.idx, data["pairs"], alpha, grid, 0.3)
    b = energy(x, q, box, wide, padded_pairs, alpha, grid, 0.3)
    for key in a:
        assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-13, abs=1e-12), key


def test_reciprocal_energy_is_invariant_to_periodic_images(small):
    total, (x, q, box, alpha), _ = small
    shifted = x.at[::7].add(box[1] - 2 * box[2]).at[::5].add(-box[0])
    energy = jax.jit(total)
    np.testing.assert_allclose(energy(shifted, q, box, alpha), energy(x, q, box, alpha), rtol=1e-12)
