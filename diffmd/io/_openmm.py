"""Convert an OpenMM ``System`` into diffmd's arrays, with the physics it defines.

Read: HarmonicBondForce, HarmonicAngleForce, PeriodicTorsionForce, CMAPTorsionForce,
NonbondedForce (scaled 1-4 exceptions; NoCutoff, CutoffNonPeriodic, CutoffPeriodic, PME,
with the System's cutoff, reaction-field dielectric, Ewald tolerance or explicit PME
parameters and dispersion correction), GBSAOBCForce and OpenMM's OBC2/OBC1/HCT
CustomGBForce recipes (``_openmm_gb``), the System's constraints and virtual sites;
CMMotionRemover is a dynamics setting (diffmd's thermostats remove centre-of-mass motion
themselves). Anything else is refused: one ``UnsupportedError`` lists every force and
feature of the System that diffmd does not model, so no energy term is silently dropped.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import numpy as np

from ..kernels.errors import InputError, UnsupportedError
from ..kernels.virtual_sites import average_site, build_virtual_sites, local_coordinates_site, out_of_plane_site
from ..potentials.amber import AmberParams, AmberTerms
from ..system import Physics
from ..system import NUMBER_BY_SYMBOL, Topology, chains_from_bonds, element_from_mass
from ._openmm_gb import GBModel, custom_gb, gbsa_obc
from ..kernels.cmap import grid_from_openmm

_IGNORED = ("CMMotionRemover",)
#: what to do instead, for forces people commonly leave in a System
_HINTS = {
    "MonteCarloBarostat": "a barostat: remove it and pass pressure= to diffmd.simulate (diffmd run --pressure)",
    "MonteCarloAnisotropicBarostat": "a barostat: remove it and pass pressure= to diffmd.simulate",
    "AndersenThermostat": "a thermostat: remove it, diffmd's integrators set the temperature",
}
#: NonbondedForce methods by OpenMM's enum value (None: not supported)
_METHODS = {0: "nocutoff", 1: "cutoff", 2: "cutoff", 3: None, 4: "pme", 5: None}
_METHOD_NAMES = {0: "NoCutoff", 1: "CutoffNonPeriodic", 2: "CutoffPeriodic", 3: "Ewald", 4: "PME", 5: "LJPME"}


class Imported(NamedTuple):
    """Host arrays of a converted OpenMM System."""

    params: AmberParams
    terms: AmberTerms
    topology: Topology
    masses: np.ndarray
    box: np.ndarray | None
    positions: np.ndarray | None
    physics: Physics


def _unit_free(x, unit):
    return x.value_in_unit(unit) if hasattr(x, "value_in_unit") else x


def from_openmm_arrays(system, positions=None, topology=None) -> Imported:
    """Host arrays and physics of an OpenMM System (see the module docstring).

    Raises:
        UnsupportedError: every force or feature diffmd does not model, in one message.
        InputError: positions or topology that do not fit the System.
    """
    import openmm
    from openmm import unit

    n = system.getNumParticles()
    masses = np.array([_unit_free(system.getParticleMass(i), unit.dalton) for i in range(n)], float)
    problems = []
    bonds, angles, torsions, cmaps, nonbondeds, gbs = [], [], [], [], [], []
    for force in system.getForces():
        name = type(force).__name__
        if isinstance(force, openmm.HarmonicBondForce):
            bonds += [force.getBondParameters(i) for i in range(force.getNumBonds())]
        elif isinstance(force, openmm.HarmonicAngleForce):
            angles += [force.getAngleParameters(i) for i in range(force.getNumAngles())]
        elif isinstance(force, openmm.PeriodicTorsionForce):
            torsions += [force.getTorsionParameters(i) for i in range(force.getNumTorsions())]
        elif isinstance(force, openmm.CMAPTorsionForce):
            cmaps.append(force)
        elif isinstance(force, openmm.NonbondedForce):
            nonbondeds.append(force)
        elif isinstance(force, openmm.GBSAOBCForce):
            gbs.append(gbsa_obc(force))
        elif isinstance(force, openmm.CustomGBForce):
            model = custom_gb(force)
            if isinstance(model, str):
                problems.append(model)
            else:
                gbs.append(model)
        elif name not in _IGNORED:
            problems.append(f"{name} ({_HINTS[name]})" if name in _HINTS else name)
    if len(cmaps) > 1:
        problems.append("more than one CMAPTorsionForce (merge them into one)")
    if len(nonbondeds) > 1:
        problems.append("more than one NonbondedForce (merge them into one)")
    if len(gbs) > 1:
        problems.append("more than one implicit-solvent force")
    if not nonbondeds:
        problems.append("no NonbondedForce (diffmd needs one; it may have zero charges)")
    sites = _virtual_sites(system, n, masses, problems)
    physics = {}
    if len(nonbondeds) == 1:
        physics = _nonbonded_settings(nonbondeds[0], problems)
    periodic = bool(system.usesPeriodicBoundaryConditions())
    if physics.get("method") == 1 and periodic:
        problems.append("NonbondedForce CutoffNonPeriodic in a periodic System (diffmd's cutoff is periodic exactly "
                        "when the System is)")
    gb = gbs[0] if len(gbs) == 1 else None
    if gb is not None and physics:
        _check_gb(gb, physics, nonbondeds[0], problems)
    if problems:
        counts = Counter(problems)
        listed = "; ".join(p if c == 1 else f"{p} x{c}" for p, c in counts.items())
        raise UnsupportedError(
            f"the OpenMM System has forces or features diffmd does not model: {listed}. Remove them from the System "
            "(or express them with supported forces: HarmonicBond/Angle, PeriodicTorsion, CMAPTorsion, Nonbonded, "
            "GBSAOBC or OpenMM's implicit/obc2.xml, obc1.xml, hct.xml), so that no energy term is silently dropped")

    nb = nonbondeds[0]
    params, terms = _force_field(n, nb, bonds, angles, torsions, cmaps[0] if cmaps else None, gb)
    pairs = np.array([system.getConstraintParameters(k)[:2] for k in range(system.getNumConstraints())],
                     np.int32).reshape(-1, 2)
    lengths = np.array([_unit_free(system.getConstraintParameters(k)[2], unit.nanometer)
                        for k in range(system.getNumConstraints())], float)
    settings = {k: v for k, v in physics.items() if k != "method"}
    if gb is not None:
        settings.update(implicit_solvent=gb.model, solute_dielectric=gb.solute_dielectric,
                        solvent_dielectric=gb.solvent_dielectric, surface_tension=gb.surface_tension)
    phys = Physics(**settings, constraint_pairs=pairs, constraint_lengths=lengths, virtual_sites=sites)

    top = _topology(n, masses, terms.bond_idx, topology)
    box = None
    if periodic:
        box = np.array([_unit_free(v, unit.nanometer) for v in system.getDefaultPeriodicBoxVectors()], float)
    if positions is not None:
        positions = np.asarray(_unit_free(positions, unit.nanometer), float)
        if positions.shape != (n, 3):
            raise InputError(f"positions must have shape ({n}, 3) [nm], got {positions.shape}")
    return Imported(params, terms, top, masses, box, positions, phys)


def _nonbonded_settings(nb, problems) -> dict:
    from openmm import unit

    method = int(nb.getNonbondedMethod())
    if _METHODS.get(method) is None:
        problems.append(f"NonbondedForce method {_METHOD_NAMES.get(method, method)} (use NoCutoff, "
                        "CutoffNonPeriodic, CutoffPeriodic or PME)")
    if nb.getUseSwitchingFunction() and method != 0:
        problems.append("NonbondedForce switching function (build the System with switchDistance=None)")
    if nb.getNumParticleParameterOffsets() or nb.getNumExceptionParameterOffsets():
        problems.append("NonbondedForce parameter offsets (alchemical parameters)")
    out = {"method": method, "nonbonded": _METHODS.get(method) or "nocutoff"}
    if method == 0:
        return out
    alpha, nx, ny, nz = nb.getPMEParameters()
    alpha = float(_unit_free(alpha, unit.nanometer**-1))
    out.update(cutoff=float(_unit_free(nb.getCutoffDistance(), unit.nanometer)),
               reaction_field_dielectric=float(nb.getReactionFieldDielectric()),
               use_dispersion_correction=bool(nb.getUseDispersionCorrection()),
               ewald_error_tolerance=float(nb.getEwaldErrorTolerance()))
    if method == 4 and alpha > 0:  # OpenMM: alpha 0 means "choose alpha and the grid from the tolerance"
        out.update(pme_alpha=alpha, pme_grid=(int(nx), int(ny), int(nz)))
    return out


def _check_gb(gb: GBModel, physics: dict, nb, problems) -> None:
    if physics["nonbonded"] == "pme":
        problems.append("implicit solvent together with PME (GB needs NoCutoff or a reaction-field cutoff)")
        return
    if gb.method != min(physics["method"], 2) or (gb.cutoff is not None
                                                 and abs(gb.cutoff - physics.get("cutoff", -1.0)) > 1e-12):
        problems.append("implicit-solvent force whose nonbonded method or cutoff differs from the NonbondedForce's")
    from openmm import unit

    q = np.array([float(_unit_free(nb.getParticleParameters(i)[0], unit.elementary_charge))
                  for i in range(nb.getNumParticles())])
    if q.shape != gb.charges.shape or not np.allclose(q, gb.charges, rtol=1e-12, atol=1e-12):
        problems.append("implicit-solvent force whose charges differ from the NonbondedForce's")


def _virtual_sites(system, n, masses, problems):
    import openmm
    from openmm import unit

    defs = []
    for i in range(n):
        if not system.isVirtualSite(i):
            continue
        vs = system.getVirtualSite(i)
        parents = [vs.getParticle(k) for k in range(vs.getNumParticles())]
        if masses[i] != 0:
            problems.append(f"virtual site {i} with mass {masses[i]:g} amu (a virtual site must be massless)")
        if isinstance(vs, (openmm.TwoParticleAverageSite, openmm.ThreeParticleAverageSite)):
            defs.append(average_site(i, parents, [vs.getWeight(k) for k in range(len(parents))]))
        elif isinstance(vs, openmm.OutOfPlaneSite):
            wcross = _unit_free(vs.getWeightCross(), unit.nanometer**-1)
            defs.append(out_of_plane_site(i, parents, vs.getWeight12(), vs.getWeight13(), wcross))
        elif isinstance(vs, openmm.LocalCoordinatesSite):
            local = _unit_free(vs.getLocalPosition(), unit.nanometer)
            defs.append(local_coordinates_site(i, parents, list(vs.getOriginWeights()), list(vs.getXWeights()),
                                               list(vs.getYWeights()), [float(c) for c in local]))
        else:
            problems.append(f"virtual site kind {type(vs).__name__}")
    if problems:
        return None
    return build_virtual_sites(defs, n, masses)


def _force_field(n, nonbonded, bonds, angles, torsions, cmap, gb):
    """(AmberParams, AmberTerms) from the bonded lists, the NonbondedForce and the GB model."""
    from openmm import unit

    kj, nm, rad = unit.kilojoule_per_mole, unit.nanometer, unit.radian
    bond_idx = np.array([[b[0], b[1]] for b in bonds], np.int32).reshape(-1, 2)
    bond_r0 = np.array([_unit_free(b[2], nm) for b in bonds], float)
    bond_k = np.array([_unit_free(b[3], kj / nm**2) for b in bonds], float)
    angle_idx = np.array([a[:3] for a in angles], np.int32).reshape(-1, 3)
    angle_theta0 = np.array([_unit_free(a[3], rad) for a in angles], float)
    angle_k = np.array([_unit_free(a[4], kj / rad**2) for a in angles], float)
    torsion_idx = np.array([t[:4] for t in torsions], np.int32).reshape(-1, 4)
    torsion_n = np.array([t[4] for t in torsions], np.int32)
    torsion_phase = np.array([_unit_free(t[5], rad) for t in torsions], float)
    torsion_k = np.array([_unit_free(t[6], kj) for t in torsions], float)

    # nonbonded: group particles into LJ types by (sigma, epsilon), Lorentz-Berthelot mixing
    q = np.zeros(n)
    sig_eps = np.zeros((n, 2))
    for i in range(n):
        c, s, e = nonbonded.getParticleParameters(i)
        q[i] = _unit_free(c, unit.elementary_charge)
        sig_eps[i] = _unit_free(s, nm), _unit_free(e, kj)
    sig_eps[sig_eps[:, 1] == 0, 0] = 0.0  # sigma is irrelevant when epsilon is zero
    classes, atom_type = np.unique(sig_eps, axis=0, return_inverse=True)
    atom_type = atom_type.reshape(-1)
    sigma = 0.5 * (classes[:, 0][:, None] + classes[:, 0][None, :])
    eps = np.sqrt(classes[:, 1][:, None] * classes[:, 1][None, :])
    lj_a, lj_b = 4 * eps * sigma**12, 4 * eps * sigma**6

    pairs, cscale, lscale, excluded = [], [], [], []
    for k in range(nonbonded.getNumExceptions()):
        i, j, qq, s, e = nonbonded.getExceptionParameters(k)
        qq, s, e = _unit_free(qq, unit.elementary_charge**2), _unit_free(s, nm), _unit_free(e, kj)
        excluded.append((i, j))
        if qq == 0 and e == 0:
            continue
        qiqj = q[i] * q[j]
        a_ij, b_ij = lj_a[atom_type[i], atom_type[j]], lj_b[atom_type[i], atom_type[j]]
        eps_ij = b_ij**2 / (4 * a_ij) if a_ij > 0 else 0.0
        sig_ij = (a_ij / b_ij) ** (1 / 6) if b_ij > 0 else 0.0
        if (qiqj == 0 and qq != 0) or (eps_ij == 0 and e != 0) or (e != 0 and abs(s - sig_ij) > 1e-6 * sig_ij):
            raise UnsupportedError(
                f"NonbondedForce exception {k} (atoms {i}, {j}) is not a scaled copy of the normal interaction "
                "(sigma differs or the scaled charge product is impossible); diffmd supports scaled 1-4 pairs only")
        pairs.append((i, j))
        cscale.append(qq / qiqj if qiqj != 0 else 0.0)
        lscale.append(e / eps_ij if eps_ij != 0 else 0.0)

    cmap_grids = np.zeros((0, 1, 1))
    cmap_idx = np.zeros((0, 5), np.int32)
    cmap_map = np.zeros((0,), np.int32)
    if cmap is not None and cmap.getNumTorsions():
        maps = [cmap.getMapParameters(m) for m in range(cmap.getNumMaps())]
        cmap_grids = np.stack([grid_from_openmm(size, np.asarray(_unit_free(e, kj), float)) for size, e in maps])
        rows = [cmap.getTorsionParameters(t) for t in range(cmap.getNumTorsions())]
        for r in rows:
            if r[2:5] != r[5:8]:
                raise UnsupportedError("CMAP torsion pairs that do not share three atoms (a1-a4, a2-a5) are not "
                                       "supported")
        cmap_map = np.array([r[0] for r in rows], np.int32)
        cmap_idx = np.array([[r[1], r[2], r[3], r[4], r[8]] for r in rows], np.int32)

    params = AmberParams(
        charges=q, lj_a=lj_a, lj_b=lj_b, bond_k=bond_k, bond_r0=bond_r0, angle_k=angle_k, angle_theta0=angle_theta0,
        torsion_k=torsion_k, torsion_phase=torsion_phase, coulomb14_scale=np.array(cscale, float),
        lj14_scale=np.array(lscale, float), cmap_grids=cmap_grids,
        gb_radii=np.zeros(n) if gb is None else gb.radii, gb_screen=np.zeros(n) if gb is None else gb.screen)
    terms = AmberTerms(
        atom_type=atom_type.astype(np.int32), type_counts=np.bincount(atom_type, minlength=len(classes)).astype(float),
        bond_idx=bond_idx, angle_idx=angle_idx, torsion_idx=torsion_idx, torsion_periodicity=torsion_n,
        pair14_idx=np.array(pairs, np.int32).reshape(-1, 2), cmap_idx=cmap_idx, cmap_map=cmap_map,
        exclusions=np.array(excluded, np.int32).reshape(-1, 2))
    return params, terms


def _topology(n, masses, bond_idx, topology):
    if topology is None:
        residue_index = np.zeros(n, np.int32)
        return Topology(atom_names=tuple(f"X{i}" for i in range(n)),
                        elements=np.array([element_from_mass(m) for m in masses], np.int32),
                        residue_index=residue_index, residue_names=("UNK",), chain_index=np.zeros(1, np.int32),
                        bonds=bond_idx)
    atoms = list(topology.atoms())
    if len(atoms) != n:
        raise InputError(f"topology has {len(atoms)} atoms but the System has {n}")
    residues = list(topology.residues())
    res_pos = {r.index: k for k, r in enumerate(residues)}
    chains = np.array([r.chain.index for r in residues], np.int32)
    elements = np.array([NUMBER_BY_SYMBOL.get(a.element.symbol.upper(), 0) if a.element is not None else 0
                         for a in atoms], np.int32)
    bonds = np.array([[b[0].index, b[1].index] for b in topology.bonds()], np.int32).reshape(-1, 2)
    residue_index = np.array([res_pos[a.residue.index] for a in atoms], np.int32)
    return Topology(atom_names=tuple(a.name for a in atoms), elements=elements, residue_index=residue_index,
                    residue_names=tuple(r.name for r in residues),
                    chain_index=chains if len(chains) else chains_from_bonds(len(residues), residue_index, bonds),
                    bonds=bonds if len(bonds) else bond_idx)
