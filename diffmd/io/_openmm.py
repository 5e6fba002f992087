"""Convert an OpenMM ``System`` into a diffmd ``System``.

Supported forces: HarmonicBondForce, HarmonicAngleForce, PeriodicTorsionForce,
CMAPTorsionForce, NonbondedForce (with exceptions) and CMMotionRemover (which
is a dynamics setting, not an energy). Anything else raises
``UnsupportedError`` naming the force, so no energy term is silently dropped.
"""

from __future__ import annotations

import numpy as np

from ..kernels.errors import InputError, UnsupportedError
from ..potentials.amber import AmberParams, AmberTerms
from .._topology import NUMBER_BY_SYMBOL, Topology, chains_from_bonds, element_from_mass

_IGNORED = ("CMMotionRemover",)


def _unit_free(x, unit):
    return x.value_in_unit(unit) if hasattr(x, "value_in_unit") else x


def from_openmm_arrays(system, positions=None, topology=None):
    """Host arrays (params, terms, topology, masses, box, positions) from an OpenMM System."""
    import openmm
    from openmm import unit

    n = system.getNumParticles()
    masses = np.array([_unit_free(system.getParticleMass(i), unit.dalton) for i in range(n)])
    bonds, angles, torsions, cmap = [], [], [], None
    nonbonded = None
    for force in system.getForces():
        name = type(force).__name__
        if isinstance(force, openmm.HarmonicBondForce):
            bonds += [force.getBondParameters(i) for i in range(force.getNumBonds())]
        elif isinstance(force, openmm.HarmonicAngleForce):
            angles += [force.getAngleParameters(i) for i in range(force.getNumAngles())]
        elif isinstance(force, openmm.PeriodicTorsionForce):
            torsions += [force.getTorsionParameters(i) for i in range(force.getNumTorsions())]
        elif isinstance(force, openmm.CMAPTorsionForce):
            if cmap is not None:
                raise UnsupportedError("more than one CMAPTorsionForce: merge them into one")
            cmap = force
        elif isinstance(force, openmm.NonbondedForce):
            if nonbonded is not None:
                raise UnsupportedError("more than one NonbondedForce: merge them into one")
            nonbonded = force
        elif name not in _IGNORED:
            raise UnsupportedError(f"OpenMM force {name} is not supported by diffmd.from_openmm; remove it from the "
                                   "System or express it with supported forces")
    if nonbonded is None:
        raise UnsupportedError("the OpenMM System has no NonbondedForce; diffmd needs one (it may have zero charges)")

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
        from ..kernels.cmap import grids_from_openmm_maps

        maps = [cmap.getMapParameters(m) for m in range(cmap.getNumMaps())]
        cmap_grids = grids_from_openmm_maps([(size, np.asarray(_unit_free(e, kj), float)) for size, e in maps])
        rows = [cmap.getTorsionParameters(t) for t in range(cmap.getNumTorsions())]
        for r in rows:
            if r[2:5] != r[5:8]:
                raise UnsupportedError("CMAP torsion pairs that do not share three atoms (a1-a4, a2-a5) are not "
                                       "supported")
        cmap_map = np.array([r[0] for r in rows], np.int32)
        cmap_idx = np.array([[r[1], r[2], r[3], r[4], r[8]] for r in rows], np.int32)

    exclusions = np.array(excluded, np.int32).reshape(-1, 2)
    params = AmberParams(
        charges=q, lj_a=lj_a, lj_b=lj_b, bond_k=bond_k, bond_r0=bond_r0, angle_k=angle_k, angle_theta0=angle_theta0,
        torsion_k=torsion_k, torsion_phase=torsion_phase, coulomb14_scale=np.array(cscale, float),
        lj14_scale=np.array(lscale, float), cmap_grids=cmap_grids, gb_radii=np.zeros(n), gb_screen=np.zeros(n))
    terms = AmberTerms(
        atom_type=atom_type.astype(np.int32), type_counts=np.bincount(atom_type, minlength=len(classes)).astype(float),
        bond_idx=bond_idx, angle_idx=angle_idx, torsion_idx=torsion_idx, torsion_periodicity=torsion_n,
        pair14_idx=np.array(pairs, np.int32).reshape(-1, 2), cmap_idx=cmap_idx, cmap_map=cmap_map,
        exclusions=exclusions)

    top = _topology(n, masses, bond_idx, topology)
    box = None
    if system.usesPeriodicBoundaryConditions():
        box = np.array([_unit_free(v, nm) for v in system.getDefaultPeriodicBoxVectors()], float)
    if positions is not None:
        positions = np.asarray(_unit_free(positions, nm), float)
        if positions.shape != (n, 3):
            raise InputError(f"positions must have shape ({n}, 3) [nm], got {positions.shape}")
    return params, terms, top, masses, box, positions


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
