"""Pose and pocket geometry of a protein-ligand trajectory: selections, superposition, ligand RMSD,
centre displacement and RMSF.

Superposition and RMSD are JAX functions (``jit``/``vmap``/``grad`` work on them, e.g. to train on
or bias a pose); selections are host-side numpy on the ``Topology``. Positions in nm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels.errors import InputError

#: residue names of water and monatomic ions, left out of the receptor
SOLVENT_RESIDUES = frozenset(("HOH", "WAT", "TIP3", "TIP4", "TIP5", "SOL", "T3P", "SPC", "OPC", "NA", "NA+", "Na+",
                              "CL", "CL-", "Cl-", "K", "K+", "MG", "Mg2+", "CA", "Ca2+", "ZN", "Zn2+", "CS", "Cs+",
                              "LI", "Li+", "RB", "Rb+", "BR", "Br-", "I", "I-", "F", "F-"))
#: default pocket: protein residues with a heavy atom within this distance of a ligand heavy atom [nm]
POCKET_CUTOFF_NM = 0.5


def ligand_atoms(topology, resname: str) -> np.ndarray:
    """0-based indices of the atoms of residue(s) named ``resname`` (e.g. ``LIG``).

    Raises:
        InputError: no residue has that name (the message lists the non-standard names present).
    """
    names = np.array([n.strip() for n in topology.residue_names])
    hit = np.flatnonzero(names == resname.strip())
    if len(hit) == 0:
        others = sorted(set(names) - _PROTEIN_NAMES - SOLVENT_RESIDUES)
        raise InputError(f"no residue named {resname!r} (the ligand); residue names that are neither amino acids "
                         f"nor solvent: {', '.join(others) or 'none'}")
    return np.flatnonzero(np.isin(topology.residue_index, hit))


_PROTEIN_NAMES = frozenset(
    "ALA ARG ASN ASP ASH CYS CYX CYM GLN GLU GLH GLY HIS HID HIE HIP ILE LEU LYS LYN MET PHE PRO SER THR TRP TYR VAL "
    "ACE NME NHE".split())


def receptor_atoms(topology, ligand: np.ndarray) -> np.ndarray:
    """Atoms that are neither the ligand nor water or monatomic ions (the receptor)."""
    solvent_res = np.array([n.strip() in SOLVENT_RESIDUES for n in topology.residue_names])
    keep = ~solvent_res[topology.residue_index]
    keep[np.asarray(ligand)] = False
    return np.flatnonzero(keep)


def heavy(topology, atoms) -> np.ndarray:
    """The non-hydrogen atoms of ``atoms``."""
    atoms = np.asarray(atoms)
    return atoms[np.asarray(topology.elements)[atoms] > 1]


def pocket_residues(topology, positions, ligand, receptor, cutoff: float = POCKET_CUTOFF_NM) -> np.ndarray:
    """Receptor residues (0-based residue indices) with a heavy atom within ``cutoff`` [nm] of a
    ligand heavy atom at ``positions`` (N, 3) [nm]."""
    lig, rec = heavy(topology, ligand), heavy(topology, receptor)
    pos = np.asarray(positions, np.float64)
    d = np.linalg.norm(pos[rec][:, None, :] - pos[lig][None, :, :], axis=-1)
    return np.unique(np.asarray(topology.residue_index)[rec[np.any(d < cutoff, axis=1)]])


def alignment_atoms(topology, positions, ligand, receptor, align: str = "pocket",
                    cutoff: float = POCKET_CUTOFF_NM) -> np.ndarray:
    """Atoms to superpose on: C-alpha atoms of the pocket (``align="pocket"``) or of the whole
    receptor (``"protein"``); all heavy receptor atoms when there are fewer than 3 C-alphas."""
    if align not in ("pocket", "protein"):
        raise InputError(f"align must be 'pocket' or 'protein', got {align!r}")
    rec = np.asarray(receptor)
    if align == "pocket":
        pocket = pocket_residues(topology, positions, ligand, receptor, cutoff)
        rec = rec[np.isin(np.asarray(topology.residue_index)[rec], pocket)]
    names = np.array([topology.atom_names[i].strip() for i in rec])
    ca = rec[names == "CA"]
    ca = ca[np.asarray(topology.elements)[ca] == 6]  # not calcium ions
    return ca if len(ca) >= 3 else heavy(topology, rec)


def superpose(positions, reference, atoms):
    """``positions`` (..., N, 3) rigidly moved to best fit ``reference`` (N, 3) on ``atoms`` (Kabsch).

    JAX: jit-, vmap- and grad-compatible (the gradient is that of the SVD; it is undefined only for
    degenerate fits, e.g. fewer than 3 non-collinear atoms). Units follow the input [nm].
    """
    atoms = jnp.asarray(atoms)

    def one(x):
        p, q = x[atoms], reference[atoms]
        cp, cq = p.mean(0), q.mean(0)
        u, _, vt = jnp.linalg.svd((p - cp[None]).T @ (q - cq[None]))
        d = jnp.sign(jnp.linalg.det(u @ vt))  # -1 would be a reflection: flip the weakest axis instead
        u = u * jnp.ones((1, 3), u.dtype).at[0, 2].set(d)
        return (x - cp[None]) @ (u @ vt) + cq[None]

    positions = jnp.asarray(positions)
    reference = jnp.asarray(reference)
    if positions.ndim == 2:
        return one(positions)
    return jax.vmap(one)(positions.reshape(-1, *positions.shape[-2:])).reshape(positions.shape)


def ligand_rmsd(positions, reference, ligand, align):
    """Ligand RMSD [nm] per frame after superposing ``align`` atoms on the reference (no fit of the
    ligand itself: a ligand that moves in the pocket counts).

    Args:
        positions: (F, N, 3) or (N, 3) [nm].
        reference: (N, 3) [nm], e.g. the first frame.
        ligand: indices of the ligand atoms compared (usually its heavy atoms).
        align: indices of the atoms superposed (e.g. ``alignment_atoms(...)``).

    Returns:
        (F,) or scalar RMSD [nm]. JAX: differentiable with respect to positions and reference.
    """
    fitted = superpose(positions, reference, align)
    ligand = jnp.asarray(ligand)
    here = fitted[..., ligand, :]
    diff = here - jnp.broadcast_to(jnp.asarray(reference)[ligand], here.shape)
    return jnp.sqrt(jnp.mean(jnp.sum(diff**2, axis=-1), axis=-1))


def ligand_displacement(positions, reference, ligand, align):
    """Distance [nm] per frame of the ligand's centroid (unweighted, over ``ligand``) from its place in
    ``reference`` after superposing ``align`` atoms. JAX, as ``ligand_rmsd``."""
    fitted = superpose(positions, reference, align)
    ligand = jnp.asarray(ligand)
    centre = fitted[..., ligand, :].mean(-2)
    start = jnp.broadcast_to(jnp.asarray(reference)[ligand].mean(0), centre.shape)
    return jnp.linalg.norm(centre - start, axis=-1)


def rmsf(positions, atoms, align, reference=None) -> np.ndarray:
    """Root-mean-square fluctuation [nm] of ``atoms`` about their mean position over the frames,
    after superposing ``align`` atoms on ``reference`` (default: the first frame), as MDTraj's
    ``md.rmsf`` with the same superposition.

    Args:
        positions: (F, N, 3) [nm].
    """
    positions = jnp.asarray(positions)
    ref = positions[0] if reference is None else jnp.asarray(reference)
    fitted = np.asarray(superpose(positions, ref, align))[:, np.asarray(atoms)]
    return np.sqrt(np.mean(np.sum((fitted - fitted.mean(0)) ** 2, axis=-1), axis=0))


def residue_rmsf(topology, positions, residues, align, reference=None) -> np.ndarray:
    """RMSF [nm] per residue: the root mean square over each residue's heavy atoms of their RMSF."""
    res_index = np.asarray(topology.residue_index)
    out = []
    for r in residues:
        atoms = heavy(topology, np.flatnonzero(res_index == r))
        out.append(float(np.sqrt(np.mean(rmsf(positions, atoms, align, reference) ** 2))))
    return np.asarray(out)
