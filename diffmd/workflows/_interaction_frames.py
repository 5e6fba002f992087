"""Protein-ligand interaction energy per frame, from the complex alone.

``diffmd.interaction_energy`` takes three parameter files (complex, receptor, ligand). A run knows
only the complex, so here the receptor and the ligand are cut out of the complex's own parameters
(``subset_system``): every term whose atoms all lie in the subset is kept, with its parameters.
For a complex built by tleap this gives exactly the receptor and ligand prmtops tleap writes
(tested), and E_int = E(complex) - E(receptor) - E(ligand) per term.

In explicit solvent the "complex" is the dry one (receptor + ligand, waters and ions left out) and
the energies are evaluated without cutoff and without solvent: the direct protein-ligand Coulomb and
Lennard-Jones interaction, not a binding free energy.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ..kernels.errors import InputError

#: the columns ``interaction_energies`` returns and the terms each sums [kJ/mol]
COMPONENTS = {"coulomb": ("coulomb",), "lj": ("lennard_jones",), "gb": ("generalized_born", "surface_area")}


def subset_system(system, atoms):
    """The ``System`` of a subset of ``system``'s atoms (sorted indices), with every bonded term,
    1-4 pair, CMAP and exclusion that lies wholly inside it and per-atom parameters sliced.
    Positions and velocities are sliced; the box is dropped (subsets are for non-periodic use)."""
    atoms = np.unique(np.asarray(atoms))
    if len(atoms) == 0:
        raise InputError("cannot cut an empty atom selection out of a system")
    n = system.n_atoms
    remap = np.full(n, -1)
    remap[atoms] = np.arange(len(atoms))
    t, p = system.terms, system.params

    def rows(idx):
        idx = np.asarray(idx)
        keep = np.all(remap[idx] >= 0, axis=1) if idx.size else np.zeros(len(idx), bool)
        return keep, remap[idx[keep]].astype(np.asarray(idx).dtype) if idx.size else idx

    bond_keep, bond_idx = rows(t.bond_idx)
    angle_keep, angle_idx = rows(t.angle_idx)
    tors_keep, tors_idx = rows(t.torsion_idx)
    p14_keep, p14_idx = rows(t.pair14_idx)
    cmap_keep, cmap_idx = rows(t.cmap_idx)
    _, excl = rows(t.exclusions)
    atom_type = np.asarray(t.atom_type)[atoms]
    counts = np.bincount(atom_type, minlength=len(np.asarray(t.type_counts))).astype(np.asarray(t.type_counts).dtype)
    terms = dataclasses.replace(
        t, atom_type=atom_type, type_counts=counts, bond_idx=bond_idx, angle_idx=angle_idx, torsion_idx=tors_idx,
        torsion_periodicity=np.asarray(t.torsion_periodicity)[tors_keep], pair14_idx=p14_idx, cmap_idx=cmap_idx,
        cmap_map=np.asarray(t.cmap_map)[cmap_keep], exclusions=excl)
    a = lambda x: np.asarray(x)
    params = dataclasses.replace(
        p, charges=a(p.charges)[atoms], bond_k=a(p.bond_k)[bond_keep], bond_r0=a(p.bond_r0)[bond_keep],
        angle_k=a(p.angle_k)[angle_keep], angle_theta0=a(p.angle_theta0)[angle_keep],
        torsion_k=a(p.torsion_k)[tors_keep], torsion_phase=a(p.torsion_phase)[tors_keep],
        coulomb14_scale=a(p.coulomb14_scale)[p14_keep], lj14_scale=a(p.lj14_scale)[p14_keep],
        gb_radii=a(p.gb_radii)[atoms], gb_screen=a(p.gb_screen)[atoms])
    sl = lambda x: None if x is None else np.asarray(x)[atoms]
    return dataclasses.replace(system, topology=system.topology.subset(atoms), masses=np.asarray(system.masses)[atoms],
                               params=params, terms=terms, positions=sl(system.positions),
                               velocities=sl(system.velocities), box=None,
                               source=f"{system.source} (atoms {atoms[0]}..{atoms[-1]}, {len(atoms)} of {n})")


def interaction_energies(system, positions, ligand, receptor, *, implicit_solvent: str | None = None,
                         precision: str = "double") -> dict:
    """Receptor-ligand interaction energy per frame and per part [kJ/mol].

    Args:
        system: the complex (``diffmd.System``), possibly with water and ions (left out).
        positions: (F, N, 3) frames of the complex [nm].
        ligand, receptor: atom indices into the complex.
        implicit_solvent: the GB model of the run (``"obc2"``...) or None (explicit solvent or vacuum:
            no GB part).
        precision: precision policy of the evaluation (``double`` needs ``jax_enable_x64``).

    Returns:
        ``{"total": (F,), "coulomb": (F,), "lj": (F,), "gb": (F,)}`` where ``gb`` is the generalized-Born
        polar + surface-area part (zeros without implicit solvent). No cutoff, no periodicity.
    """
    ligand, receptor = np.unique(ligand), np.unique(receptor)
    dry = np.union1d(receptor, ligand)
    parts = {"complex": (subset_system(system, dry), slice(None)),
             "receptor": (subset_system(system, receptor), np.searchsorted(dry, receptor)),
             "ligand": (subset_system(system, ligand), np.searchsorted(dry, ligand))}
    frames = np.asarray(positions, np.float64)[:, dry]
    totals = {}
    for name, (sub, pick) in parts.items():
        params, energy_fn = sub.energy_fn(nonbonded="nocutoff", implicit_solvent=implicit_solvent,
                                          precision=precision)
        nbrs = energy_fn.neighbor_list(frames[0][pick], None)
        terms_fn = jax.jit(energy_fn.terms)  # parameters and table as arguments: no constant folding of big tables
        rows = [terms_fn(params, f[pick], None, nbrs) for f in frames]
        totals[name] = {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}
    diff = {k: totals["complex"][k] - totals["receptor"][k] - totals["ligand"][k] for k in totals["complex"]}
    out = {c: sum(diff.get(k, 0.0) for k in keys) * np.ones(len(frames)) for c, keys in COMPONENTS.items()}
    out["total"] = sum(diff.values())
    return out
