"""CMAP torsion kernel against OpenMM's CMAPTorsionForce (Reference platform, double precision)."""

from __future__ import annotations

import lzma
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

mm = pytest.importorskip("openmm")
app = pytest.importorskip("openmm.app")
from openmm.app.internal.amber_file_parser import PrmtopLoader  # noqa: E402

from diffmd.kernels.cmap import (  # noqa: E402
    CMAPCoefficients,
    cmap_coefficients,
    cmap_energy,
    cmap_energy_from_grids,
    cmap_from_prmtop_sections,
    cmap_term_energies,
    grid_from_openmm,
    grid_to_openmm,
    spline_derivative_matrix,
)
from diffmd.kernels.errors import InputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]  # tests/
ALA = ROOT.parent / "diffmd" / "data" / "alanine-dipeptide"
CMAP_DATA = ROOT / "data" / "cmap"

# alanine dipeptide: phi = C(ACE)-N-CA-C, psi = N-CA-C-N(NME)
PHI = (4, 6, 8, 14)
PSI = (6, 8, 14, 16)
# three terms: (phi, psi) on the 24-map, (psi, phi) on the 25-map, and two
# side dihedrals (H-N-CA-HA, HA-CA-C-O) on the 24-map
TORSIONS = np.array([PHI + PSI, PSI + PHI, (7, 6, 8, 9, 9, 8, 14, 15)], dtype=np.int64)
MAP_INDEX = np.array([0, 1, 0], dtype=np.int64)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def smooth_grid(size, seed, modes=3, scale=4.0):
    """A random smooth periodic map [kJ/mol] in diffmd's (i, j) grid layout."""
    rng = np.random.default_rng(seed)
    ang = np.arange(size) * 2 * np.pi / size
    phi, psi = np.meshgrid(ang, ang, indexing="ij")
    grid = np.full((size, size), rng.normal())
    for k in range(-modes, modes + 1):
        for m in range(0, modes + 1):
            amp = scale * rng.normal() / (1 + k * k + m * m)
            grid += amp * np.cos(k * phi + m * psi + rng.uniform(0, 2 * np.pi))
    return grid


def openmm_cmap_force(grids, torsions, map_index, periodic=False):
    force = mm.CMAPTorsionForce()
    for g in grids:
        force.addMap(int(g.shape[0]), grid_to_openmm(g))
    for t, m in zip(torsions, map_index):
        force.addTorsion(int(m), *[int(a) for a in t])
    force.setUsesPeriodicBoundaryConditions(periodic)
    return force


def openmm_reference(force, n_atoms, positions_list, box=None):
    """Energies (kJ/mol) and forces (kJ/mol/nm) of one force, Reference platform."""
    system = mm.System()
    for _ in range(n_atoms):
        system.addParticle(1.0)
    system.addForce(force)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*[mm.Vec3(*row) for row in np.asarray(box)])
    context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatform("Reference"))
    energies, forces = [], []
    for pos in positions_list:
        context.setPositions(np.asarray(pos, dtype=np.float64))
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(mm.unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(mm.unit.kilojoule_per_mole / mm.unit.nanometer))
    return np.array(energies), np.array(forces), context


def dihedral_np(r1, r2, r3, r4):
    b1, b2, b3 = r2 - r1, r3 - r2, r4 - r3
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    return math.atan2(np.linalg.norm(b2) * np.dot(b1, n2), np.dot(n1, n2))


def rotate_about(point, origin, axis, angle):
    k = axis / np.linalg.norm(axis)
    p = point - origin
    p = p * math.cos(angle) + np.cross(k, p) * math.sin(angle) + k * np.dot(k, p) * (1 - math.cos(angle))
    return origin + p


def set_phi_psi(pos, phi, psi):
    """Set phi by turning ACE's C about N-CA, psi by turning NME's N about CA-C."""
    pos = pos.copy()
    for atoms, target, moved in ((PHI, phi, PHI[0]), (PSI, psi, PSI[3])):
        _, b, c, _ = atoms
        change = target - dihedral_np(*pos[list(atoms)])
        # a right-handed turn about b->c moves the last atom's dihedral up and the first's down
        sign = -1.0 if moved == atoms[0] else 1.0
        pos[moved] = rotate_about(pos[moved], pos[b], pos[c] - pos[b], sign * change)
        assert abs(math.remainder(dihedral_np(*pos[list(atoms)]) - target, 2 * math.pi)) < 1e-9
    return pos


@pytest.fixture(scope="module")
def ala_positions():
    crd = app.AmberInpcrdFile(str(ALA / "alanine-dipeptide.crd"))
    return np.asarray(crd.getPositions(asNumpy=True).value_in_unit(mm.unit.nanometer), dtype=np.float64)


@pytest.fixture(scope="module")
def maps():
    return [smooth_grid(24, 1), smooth_grid(25, 2)]


# phi, psi pairs on patch boundaries (+-pi, 0, grid nodes) and in the interior
EDGE_ANGLES = [
    (math.pi - 1e-10, -math.pi + 1e-10),
    (-math.pi + 1e-7, 1e-9),
    (-1e-9, math.pi - 1e-8),
    (0.0, 0.0),
    (math.pi, -1e-12),
    (5 * 2 * math.pi / 24, 3 * 2 * math.pi / 25),
    (-7 * 2 * math.pi / 25, -11 * 2 * math.pi / 24),
    (-1.2, 2.5),
    (-1.1, -0.7),
    (1.0, 0.3),
]


@pytest.fixture(scope="module")
def conformations(ala_positions):
    return np.stack([set_phi_psi(ala_positions, phi, psi) for phi, psi in EDGE_ANGLES])


_energy_and_grad = jax.jit(jax.value_and_grad(cmap_energy))


def diffmd_energy_forces(positions, box, torsions, map_index, coeff):
    e, g = _energy_and_grad(jnp.asarray(positions), box, torsions, map_index, coeff)
    return float(e), -np.asarray(g)


def assert_matches(e, f, e_ref, f_ref, rel):
    scale_e = max(abs(e_ref), 1.0)
    assert abs(e - e_ref) <= rel * scale_e, (e, e_ref)
    rms_ref = np.sqrt(np.mean(f_ref**2))
    rms_err = np.sqrt(np.mean((f - f_ref) ** 2))
    assert rms_err <= rel * rms_ref, (rms_err, rms_ref)


# ---------------------------------------------------------------------------
# coefficients
# ---------------------------------------------------------------------------


def test_spline_derivative_is_exact_for_trig_and_periodic():
    """A periodic cubic spline's node derivative converges to the true derivative."""
    for size in (24, 25):
        x = np.arange(size) * 2 * np.pi / size
        d = spline_derivative_matrix(size)
        assert np.allclose(d @ np.ones(size), 0.0, atol=1e-12)
        err = np.max(np.abs(d @ np.sin(x) - np.cos(x)))
        assert err < 5e-4  # O(h^4) accuracy of cubic splines


def test_grid_layout_roundtrip():
    flat = np.arange(20.0)
    grid = grid_from_openmm(4, flat[:16])
    assert grid[1, 2] == flat[1 + 4 * 2]
    assert grid_to_openmm(grid) == list(flat[:16])
    with pytest.raises(InputError):
        grid_from_openmm(5, flat)


def test_stacked_equals_list_path(maps):
    a = cmap_coefficients(np.stack([maps[0], 2 * maps[0]]))
    b = cmap_coefficients([maps[0], 2 * maps[0]])
    np.testing.assert_allclose(a.coefficients, b.coefficients, rtol=0, atol=1e-12)
    assert a.sizes == (24, 24)
    mixed = cmap_coefficients(maps)
    assert mixed.coefficients.shape == (2, 25, 25, 4, 4)
    assert mixed.sizes == (24, 25)


def test_bad_grids_raise():
    with pytest.raises(InputError):
        cmap_coefficients(np.zeros((24, 24)))
    with pytest.raises(InputError):
        cmap_coefficients([np.zeros((4, 5))])
    with pytest.raises(InputError):
        cmap_coefficients(np.zeros((0, 24, 24)))


# ---------------------------------------------------------------------------
# energies and forces vs OpenMM
# ---------------------------------------------------------------------------


def test_alanine_dipeptide_matches_openmm(maps, conformations):
    n = conformations.shape[1]
    e_ref, f_ref, _ = openmm_reference(openmm_cmap_force(maps, TORSIONS, MAP_INDEX), n, conformations)
    coeff = cmap_coefficients(maps)
    for pos, er, fr in zip(conformations, e_ref, f_ref):
        e, f = diffmd_energy_forces(pos, None, TORSIONS, MAP_INDEX, coeff)
        assert_matches(e, f, er, fr, rel=1e-6)
        # measured agreement is at rounding level; keep a tight second check
        assert abs(e - er) <= 1e-9 * max(abs(er), 1.0)


def test_five_atom_form_equals_eight(maps, conformations):
    coeff = cmap_coefficients(maps)
    five = np.array([PHI + (PSI[3],)], dtype=np.int64)
    eight = np.array([PHI + PSI], dtype=np.int64)
    for pos in conformations[:4]:
        e5 = cmap_energy(jnp.asarray(pos), None, five, np.array([1]), coeff)
        e8 = cmap_energy(jnp.asarray(pos), None, eight, np.array([1]), coeff)
        assert float(e5) == float(e8)


def test_periodic_box_matches_openmm(maps, conformations):
    box = np.array([[2.5, 0.0, 0.0], [0.6, 2.4, 0.0], [-0.5, 0.7, 2.3]])
    rng = np.random.default_rng(5)
    shifted = []
    for pos in conformations[:4]:
        images = rng.integers(-2, 3, size=(pos.shape[0], 3))
        shifted.append(pos + images @ box)
    n = conformations.shape[1]
    force = openmm_cmap_force(maps, TORSIONS, MAP_INDEX, periodic=True)
    e_ref, f_ref, _ = openmm_reference(force, n, shifted, box=box)
    coeff = cmap_coefficients(maps)
    for pos, er, fr in zip(shifted, e_ref, f_ref):
        e, f = diffmd_energy_forces(pos, jnp.asarray(box), TORSIONS, MAP_INDEX, coeff)
        assert_matches(e, f, er, fr, rel=1e-6)


def test_float32_close_to_openmm(maps, conformations):
    n = conformations.shape[1]
    e_ref, f_ref, _ = openmm_reference(openmm_cmap_force(maps, TORSIONS, MAP_INDEX), n, conformations)
    coeff = cmap_coefficients([jnp.asarray(g, jnp.float32) for g in maps])
    assert coeff.coefficients.dtype == jnp.float32
    for pos, er, fr in zip(conformations, e_ref, f_ref):
        pos32 = jnp.asarray(pos, jnp.float32)
        e, g = _energy_and_grad(pos32, None, TORSIONS, MAP_INDEX, coeff)
        assert e.dtype == jnp.float32 and g.dtype == jnp.float32
        assert_matches(float(e), -np.asarray(g, np.float64), er, fr, rel=1e-4)


def test_collinear_atoms_give_finite_gradients(maps, ala_positions):
    pos = ala_positions.copy()
    # put ACE's C on the N-CA line: phi is undefined there
    pos[4] = pos[6] + 0.7 * (pos[6] - pos[8])
    coeff = cmap_coefficients(maps)
    for p in (pos, pos + np.where(np.arange(22)[:, None] == 4, 1e-7, 0.0)):
        e, g = _energy_and_grad(jnp.asarray(p), None, TORSIONS, MAP_INDEX, coeff)
        assert np.isfinite(float(e))
        assert np.all(np.isfinite(np.asarray(g)))
    grad_coeff = jax.grad(lambda c: cmap_energy(jnp.asarray(pos), None, TORSIONS, MAP_INDEX, c))(coeff)
    assert np.all(np.isfinite(np.asarray(grad_coeff.coefficients)))


# ---------------------------------------------------------------------------
# JAX behaviour
# ---------------------------------------------------------------------------


def test_jit_equals_eager_and_vmap_equals_loop(maps, conformations):
    coeff = cmap_coefficients(maps)
    fn = lambda p: cmap_energy(p, None, TORSIONS, MAP_INDEX, coeff)  # noqa: E731
    pos = jnp.asarray(conformations)
    jitted_fn = jax.jit(fn)
    loop = np.array([float(jitted_fn(p)) for p in pos])
    eager = np.array([float(fn(p)) for p in pos[:3]])
    np.testing.assert_allclose(loop[:3], eager, rtol=1e-13, atol=1e-12)
    batched = jax.jit(jax.vmap(fn))(pos)
    np.testing.assert_allclose(np.asarray(batched), loop, rtol=1e-13, atol=1e-12)
    forces = jax.jit(jax.vmap(jax.grad(fn)))(pos)
    for p, fb in zip(pos[:3], forces[:3]):
        np.testing.assert_allclose(np.asarray(fb), np.asarray(jax.grad(fn)(p)), rtol=1e-12, atol=1e-10)
    from_grids = jax.jit(lambda p: cmap_energy_from_grids(p, None, TORSIONS, MAP_INDEX, maps))(pos[0])
    np.testing.assert_allclose(float(from_grids), loop[0], rtol=1e-14)
    per_term = cmap_term_energies(pos[0], None, TORSIONS, MAP_INDEX, coeff)
    assert per_term.shape == (3,)
    np.testing.assert_allclose(float(jnp.sum(per_term)), loop[0], rtol=1e-14)


def test_vmap_over_grid_sets(maps, conformations):
    pos = jnp.asarray(conformations[7])
    stacked = jnp.asarray(np.stack([maps[0], smooth_grid(24, 9)]))
    sets = jnp.stack([stacked, 0.5 * stacked + 1.0, -stacked])
    torsions, map_index = TORSIONS, np.array([0, 1, 0])
    fn = lambda g: cmap_energy(pos, None, torsions, map_index, cmap_coefficients(g))  # noqa: E731
    batched = jax.jit(jax.vmap(fn))(sets)
    loop = [float(fn(g)) for g in sets]
    np.testing.assert_allclose(np.asarray(batched), loop, rtol=1e-12, atol=1e-12)


def test_grid_gradient_matches_finite_differences_and_openmm(maps, conformations):
    pos = conformations[8]
    n = pos.shape[0]
    fn = jax.jit(lambda gs: cmap_energy(jnp.asarray(pos), None, TORSIONS, MAP_INDEX, cmap_coefficients(gs)))
    grads = jax.jit(jax.grad(fn))([jnp.asarray(g) for g in maps])
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    scale = max(float(np.max(np.abs(np.asarray(g)))) for g in grads)
    force = openmm_cmap_force(maps, TORSIONS, MAP_INDEX)
    _, _, context = openmm_reference(force, n, [pos])
    eps = 1e-3
    rng = np.random.default_rng(3)
    # entries next to the visited patches (largest gradient) plus random ones
    entries = [(m, *np.unravel_index(np.argmax(np.abs(np.asarray(grads[m]))), maps[m].shape)) for m in (0, 1)]
    entries += [(int(m), int(i), int(j)) for m, i, j in zip(rng.integers(0, 2, 6), rng.integers(0, 24, 6), rng.integers(0, 24, 6))]
    for m, i, j in entries:
        diffs = []
        for sign in (1, -1):
            g = [np.array(x) for x in maps]
            g[m][i, j] += sign * eps
            diffs.append((float(fn([jnp.asarray(x) for x in g])), g))
        fd = (diffs[0][0] - diffs[1][0]) / (2 * eps)
        assert abs(float(grads[m][i, j]) - fd) <= 1e-7 * scale
        # the same derivative from OpenMM's own map handling
        e_omm = []
        for _, g in diffs:
            force.setMapParameters(m, g[m].shape[0], grid_to_openmm(g[m]))
            force.updateParametersInContext(context)
            e_omm.append(context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(mm.unit.kilojoule_per_mole))
        fd_omm = (e_omm[0] - e_omm[1]) / (2 * eps)
        assert abs(float(grads[m][i, j]) - fd_omm) <= 1e-7 * scale
        force.setMapParameters(m, maps[m].shape[0], grid_to_openmm(maps[m]))
    assert isinstance(cmap_coefficients(maps), CMAPCoefficients)


# ---------------------------------------------------------------------------
# prmtop conversion
# ---------------------------------------------------------------------------


def openmm_map(force, m):
    size, energy = force.getMapParameters(m)
    if mm.unit.is_quantity(energy):
        energy = energy.value_in_unit(mm.unit.kilojoule_per_mole)
    return grid_from_openmm(size, energy)


def _fortran_block(flag, fmt, per_line, width, values):
    lines = [f"%FLAG {flag}", f"%FORMAT({fmt})"]
    for start in range(0, len(values), per_line):
        lines.append("".join(v.rjust(width) for v in values[start:start + per_line]))
    return "\n".join(lines) + "\n"


def test_prmtop_sections_with_odd_and_even_grids(tmp_path, maps, conformations):
    """Append CMAP_* sections (sizes 24 and 25) to a real prmtop; compare with OpenMM's loader."""
    text = (ALA / "alanine-dipeptide.prmtop").read_text()
    grids_kcal = [g / 4.184 for g in maps]
    blocks = [
        _fortran_block("CMAP_COUNT", "2I8", 2, 8, ["2", "2"]),
        _fortran_block("CMAP_RESOLUTION", "20I4", 20, 4, ["24", "25"]),
    ]
    for m, g in enumerate(grids_kcal):
        blocks.append(_fortran_block(f"CMAP_PARAMETER_{m + 1:02d}", "8(F9.5)", 8, 9, [f"{v:.5f}" for v in g.reshape(-1)]))
    amber_index = [(5, 7, 9, 15, 17, 1), (5, 7, 9, 15, 17, 2)]
    blocks.append(_fortran_block("CMAP_INDEX", "6I8", 6, 8, [str(v) for row in amber_index for v in row]))
    path = tmp_path / "ala_cmap.prmtop"
    path.write_text(text.rstrip("\n") + "\n" + "".join(blocks))

    system = app.AmberPrmtopFile(str(path)).createSystem()
    (omm_force,) = [f for f in system.getForces() if isinstance(f, mm.CMAPTorsionForce)]
    grids, torsions, map_index = cmap_from_prmtop_sections(PrmtopLoader(str(path))._raw_data, n_atoms=22)
    assert isinstance(grids, list) and [g.shape for g in grids] == [(24, 24), (25, 25)]
    for m in range(2):
        np.testing.assert_allclose(grids[m], openmm_map(omm_force, m), rtol=1e-14, atol=0)
    np.testing.assert_array_equal(torsions, [PHI + (PSI[3],)] * 2)
    np.testing.assert_array_equal(map_index, [0, 1])
    e_ref, f_ref, _ = openmm_reference(mm.XmlSerializer.clone(omm_force), 22, conformations)
    coeff = cmap_coefficients(grids)
    for pos, er, fr in zip(conformations, e_ref, f_ref):
        e, f = diffmd_energy_forces(pos, None, torsions, map_index, coeff)
        assert_matches(e, f, er, fr, rel=1e-6)


def _unpack(tmp_path, name):
    out = tmp_path / name
    out.write_bytes(lzma.decompress((CMAP_DATA / f"{name}.xz").read_bytes()))
    return str(out)


def _check_real_prmtop(prmtop_path, positions):
    prmtop = app.AmberPrmtopFile(prmtop_path)
    system = prmtop.createSystem()
    (omm_force,) = [f for f in system.getForces() if isinstance(f, mm.CMAPTorsionForce)]
    n = system.getNumParticles()
    grids, torsions, map_index = cmap_from_prmtop_sections(PrmtopLoader(prmtop_path)._raw_data, n_atoms=n)
    assert grids.shape == (omm_force.getNumMaps(), 24, 24)
    for m in range(omm_force.getNumMaps()):
        np.testing.assert_allclose(grids[m], openmm_map(omm_force, m), rtol=1e-14, atol=0)
    ref_terms = [omm_force.getTorsionParameters(i) for i in range(omm_force.getNumTorsions())]
    np.testing.assert_array_equal(map_index, [t[0] for t in ref_terms])
    np.testing.assert_array_equal(np.concatenate([torsions[:, 0:4], torsions[:, 1:5]], axis=1), [t[1:] for t in ref_terms])
    e_ref, f_ref, _ = openmm_reference(mm.XmlSerializer.clone(omm_force), n, [positions])
    e, f = diffmd_energy_forces(positions, None, torsions, map_index, cmap_coefficients(grids))
    assert_matches(e, f, e_ref[0], f_ref[0], rel=1e-6)
    assert abs(e - e_ref[0]) <= 1e-9 * abs(e_ref[0])
    return e_ref[0], len(map_index)


def test_real_ff19sb_prmtop(tmp_path):
    """OpenMM's 18protein test system (ff19SB-style, 16 maps, 16 CMAP terms)."""
    prmtop_path = _unpack(tmp_path, "18protein.parm7")
    crd = app.AmberInpcrdFile(_unpack(tmp_path, "18protein.rst7"))
    pos = np.asarray(crd.getPositions(asNumpy=True).value_in_unit(mm.unit.nanometer), dtype=np.float64)
    energy, n_terms = _check_real_prmtop(prmtop_path, pos)
    assert n_terms == 16 and abs(energy) > 1.0


def test_real_chamber_prmtop(tmp_path):
    """OpenMM's chamber (CHARMM36) test system: CHARMM_CMAP_* sections."""
    prmtop_path = _unpack(tmp_path, "ala3_solv.parm7")
    crd = app.CharmmCrdFile(_unpack(tmp_path, "ala3_solv.crd"))
    pos = np.asarray(crd.positions.value_in_unit(mm.unit.nanometer), dtype=np.float64)
    _, n_terms = _check_real_prmtop(prmtop_path, pos)
    assert n_terms == 1


def test_prmtop_without_cmap_and_bad_sections():
    grids, torsions, map_index = cmap_from_prmtop_sections({"POINTERS": [0] * 31})
    assert grids.shape == (0, 0, 0) and torsions.shape == (0, 5) and map_index.shape == (0,)
    good = {
        "CMAP_COUNT": [1, 1],
        "CMAP_RESOLUTION": [4],
        "CMAP_PARAMETER_01": list(range(16)),
        "CMAP_INDEX": [1, 2, 3, 4, 5, 1],
    }
    grids, torsions, map_index = cmap_from_prmtop_sections(good)
    # Amber's (phi, psi) = (-180 + 90 a, -180 + 90 b) entry a*4+b lands at ((a+2)%4, (b+2)%4)
    assert grids[0, 0, 0] == pytest.approx(4.184 * (2 * 4 + 2))
    assert grids[0, 1, 3] == pytest.approx(4.184 * (3 * 4 + 1))
    np.testing.assert_array_equal(torsions, [[0, 1, 2, 3, 4]])
    bad_cases = [
        {k: v for k, v in good.items() if k != "CMAP_RESOLUTION"},
        {**good, "CMAP_PARAMETER_01": list(range(15))},
        {**good, "CMAP_INDEX": [1, 2, 3, 4, 5]},
        {**good, "CMAP_INDEX": [0, 2, 3, 4, 5, 1]},
        {**good, "CMAP_INDEX": [1, 2, 3, 4, 5, 2]},
        {k: v for k, v in good.items() if k != "CMAP_PARAMETER_01"},
    ]
    for bad in bad_cases:
        with pytest.raises(InputError):
            cmap_from_prmtop_sections(bad)
    with pytest.raises(InputError):
        cmap_from_prmtop_sections(good, n_atoms=4)
    charmm = {"CHARMM_" + k: v for k, v in good.items()}
    np.testing.assert_array_equal(cmap_from_prmtop_sections(charmm)[0], grids)
