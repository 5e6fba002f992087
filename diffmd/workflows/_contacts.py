"""Protein-ligand contacts and hydrogen bonds per frame (host numpy on the ``Topology``).

Criteria (the ones MDTraj uses, so its functions serve as the tests' reference):

- contact: a receptor heavy atom within ``CONTACT_CUTOFF_NM`` (0.4 nm) of a ligand heavy atom;
  a residue is in contact when any of its heavy atoms is.
- hydrogen bond (Baker-Hubbard, as ``mdtraj.baker_hubbard``): donor D (N or O bonded to hydrogen
  H) and acceptor A (N or O) in different molecules, H...A < 0.25 nm and angle D-H...A > 120 deg.
"""

from __future__ import annotations

import numpy as np

from ._pose import heavy

CONTACT_CUTOFF_NM = 0.4
HBOND_DISTANCE_NM = 0.25
HBOND_ANGLE_DEG = 120.0


def residue_label(topology, residue: int) -> str:
    """``'LEU84'``: the residue's name and 1-based number in the file."""
    return f"{topology.residue_names[residue].strip()}{residue + 1}"


def contacts(topology, positions, ligand, receptor, cutoff: float = CONTACT_CUTOFF_NM):
    """Protein-ligand heavy-atom contacts per frame.

    Args:
        positions: (F, N, 3) [nm].
        ligand, receptor: atom indices.
        cutoff: contact distance [nm].

    Returns:
        ``(n_atom_pairs, residues)``: (F,) number of receptor-ligand heavy-atom pairs closer than
        ``cutoff``, and per frame the sorted 0-based indices of receptor residues in contact.
    """
    lig, rec = heavy(topology, ligand), heavy(topology, receptor)
    res_of = np.asarray(topology.residue_index)[rec]
    pos = np.asarray(positions, np.float64)
    pairs, residues = [], []
    for frame in pos:
        d = np.linalg.norm(frame[rec][:, None, :] - frame[lig][None, :, :], axis=-1)
        close = d < cutoff
        pairs.append(int(close.sum()))
        residues.append(np.unique(res_of[close.any(axis=1)]))
    return np.asarray(pairs), residues


def _donors_acceptors(topology, atoms):
    """``(donor_heavy, donor_h)`` pairs and acceptors (N/O) among ``atoms``."""
    atoms = {int(a) for a in atoms}
    z = np.asarray(topology.elements)
    polar = {a for a in atoms if z[a] in (7, 8)}
    donors = []
    for i, j in np.asarray(topology.bonds):
        i, j = int(i), int(j)
        if i in polar and z[j] == 1 and j in atoms:
            donors.append((i, j))
        elif j in polar and z[i] == 1 and i in atoms:
            donors.append((j, i))
    return donors, sorted(polar)


def hydrogen_bonds(topology, positions, ligand, receptor, distance: float = HBOND_DISTANCE_NM,
                   angle_deg: float = HBOND_ANGLE_DEG):
    """Protein-ligand hydrogen bonds per frame (Baker-Hubbard criterion).

    Args:
        positions: (F, N, 3) [nm].

    Returns:
        per frame a list of ``(donor, hydrogen, acceptor)`` atom-index triplets, with donor and
        acceptor on opposite sides (ligand donor to receptor acceptor, or the reverse).
    """
    lig_d, lig_a = _donors_acceptors(topology, ligand)
    rec_d, rec_a = _donors_acceptors(topology, receptor)
    candidates = [(d, h, a) for d, h in lig_d for a in rec_a] + [(d, h, a) for d, h in rec_d for a in lig_a]
    if not candidates:
        return [[] for _ in range(len(positions))]
    trip = np.asarray(candidates)
    pos = np.asarray(positions, np.float64)
    cos_max = np.cos(np.radians(angle_deg))
    out = []
    for frame in pos:
        d, h, a = frame[trip[:, 0]], frame[trip[:, 1]], frame[trip[:, 2]]
        ha = a - h
        r = np.linalg.norm(ha, axis=1)
        hd = d - h
        cos = np.sum(hd * ha, axis=1) / (np.linalg.norm(hd, axis=1) * r)
        ok = (r < distance) & (cos < cos_max)  # angle D-H...A > 120 deg  <=>  cos < cos(120)
        out.append([tuple(int(v) for v in t) for t in trip[ok]])
    return out
