"""Train a neural potential on alanine dipeptide frames from Amber MD, then run MD with it.

1. Generate frames with diffmd (vacuum, Amber ff, Langevin, R replicas in one batched ensemble),
   labelled with the force field's energies and forces.
2. Train SchNet (or PaiNN) by energy and force matching; report energy MAE and force RMSE on
   held-out frames.
3. Run Langevin MD with the learned potential and compare its backbone (phi, psi) distribution
   with the Amber frames': Jensen-Shannon divergence of 2-D histograms (bits; 0 = identical,
   1 = disjoint).

    python examples/train_neural_alanine.py --quick      # CI size, about a minute
    python examples/train_neural_alanine.py              # full size (see the README's Training section)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax

jax.config.update("jax_enable_x64", True)  # Amber labels in double precision

import numpy as np  # noqa: E402

import diffmd  # noqa: E402
from diffmd import datasets, train  # noqa: E402
from diffmd._runner import run_dynamics  # noqa: E402
from diffmd.integrators import make_force_fn  # noqa: E402
from diffmd.reporters import Reporter  # noqa: E402
from diffmd.simulate import prepare  # noqa: E402

SIZES = {
    "quick": dict(frames=240, every=20, replicas=4, equilibrate=100, features=16, interactions=2, n_rbf=12,
                  steps=200, batch_size=16, learning_rate=3e-3, md_steps=1000, md_every=10, md_replicas=1),
    "full": dict(frames=6000, every=100, replicas=16, equilibrate=2000, features=64, interactions=3, n_rbf=20,
                 steps=6000, batch_size=32, learning_rate=1e-3, md_steps=50000, md_every=50, md_replicas=4),
}


def backbone_dihedral_atoms(topology) -> tuple[list[int], list[int]]:
    """Atom indices of phi (C-N-CA-C) and psi (N-CA-C-N) around the first CA, from atom names."""
    names, res = list(topology.atom_names), np.asarray(topology.residue_index)

    def find(name, residue):
        hits = [i for i, (n, r) in enumerate(zip(names, res)) if n == name and r == residue]
        if not hits:
            raise ValueError(f"no atom {name} in residue {residue}")
        return hits[0]

    ca = names.index("CA")
    r = int(res[ca])
    phi = [find("C", r - 1), find("N", r), ca, find("C", r)]
    psi = [find("N", r), ca, find("C", r), find("N", r + 1)]
    return phi, psi


def dihedrals(positions, quad) -> np.ndarray:
    """(F,) dihedral angles [degrees] of atoms ``quad`` in (F, N, 3) frames."""
    p = np.asarray(positions)[:, quad]
    b0, b1, b2 = p[:, 0] - p[:, 1], p[:, 2] - p[:, 1], p[:, 3] - p[:, 2]
    b1n = b1 / np.linalg.norm(b1, axis=1, keepdims=True)
    v = b0 - np.sum(b0 * b1n, axis=1, keepdims=True) * b1n
    w = b2 - np.sum(b2 * b1n, axis=1, keepdims=True) * b1n
    x = np.sum(v * w, axis=1)
    y = np.sum(np.cross(b1n, v) * w, axis=1)
    return np.degrees(np.arctan2(y, x))


def js_divergence_2d(a, b, bins: int = 36) -> float:
    """Jensen-Shannon divergence [bits] of two (phi, psi) samples on a bins x bins periodic grid."""
    edges = np.linspace(-180.0, 180.0, bins + 1)
    p = np.histogram2d(a[:, 0], a[:, 1], bins=[edges, edges])[0].ravel()
    q = np.histogram2d(b[:, 0], b[:, 1], bins=[edges, edges])[0].ravel()
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(x):
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


class _Frames(Reporter):
    """Collects positions every ``interval`` steps."""

    def __init__(self, interval):
        super().__init__(interval)
        self.frames = []

    def report(self, snapshot):
        self.frames.append(snapshot.positions.copy())


def learned_md(system, params, energy_fn, steps, every, *, temperature, seed):
    """Langevin MD of ``system`` (H-bond constraints, 2 fs) with the learned potential; (F, N, 3) frames."""
    prep = prepare(system, temperature=temperature, seed=seed, precision="mixed")
    table = energy_fn.neighbor_list(np.asarray(prep.carry.state.positions), None)
    energy, forces = make_force_fn(energy_fn, params, None, table)(prep.carry.state.positions)
    st = prep.carry.state
    st = dataclasses.replace(st, forces=forces.astype(st.forces.dtype),
                             potential_energy=energy.astype(st.potential_energy.dtype))
    carry = dataclasses.replace(prep.carry, state=st, neighbors=table)
    frames = _Frames(every)

    result = run_dynamics(prep.integrator, energy_fn, params, carry, steps, box=None, constraints=prep.constraints,
                          n_dof=prep.n_dof, dt_ps=0.002, chunk_size=every, reporters=[frames], throw=False)
    # an unstable learned potential stops the run (result.error); the frames up to then still count
    return np.array(frames.frames[1:]).reshape(-1, system.n_atoms, 3), result.error


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI size (seconds to a minute of work)")
    parser.add_argument("--model", choices=["schnet", "painn"], default="schnet")
    parser.add_argument("--temperature", type=float, default=400.0, help="[K] of data generation and learned MD")
    parser.add_argument("--out", default="train-alanine-out", help="output folder")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    timings = {}
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())

    t = time.perf_counter()
    data = datasets.generate(system, size["frames"], size["every"], replicas=size["replicas"],
                             temperature=args.temperature, equilibrate=size["equilibrate"], seed=1,
                             minimize=False, progress=args.progress)
    os.makedirs(args.out, exist_ok=True)
    datasets.save_npz(data, os.path.join(args.out, "frames.npz"))
    timings["generate_s"] = time.perf_counter() - t
    train_set, val_set = datasets.split(data, 0.1, seed=0)

    t = time.perf_counter()
    params, energy_fn, spec = train.build_model(
        dict(kind=args.model, cutoff=0.5, features=size["features"], interactions=size["interactions"],
             n_rbf=size["n_rbf"]), train_set)
    cfg = train.TrainConfig(steps=size["steps"], batch_size=size["batch_size"], learning_rate=size["learning_rate"],
                            schedule="warmup_cosine", warmup_steps=size["steps"] // 20,
                            final_learning_rate=size["learning_rate"] / 50, validate_every=max(size["steps"] // 10, 1),
                            energy_weight=1.0, force_weight=0.01)
    before = train.evaluate(params, energy_fn, val_set)
    result = train.train(params, energy_fn, train_set, val_set, cfg, out=args.out, progress=args.progress)
    train.save_model(args.out, result.params, spec)
    after = train.evaluate(result.params, energy_fn, val_set)
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    phi, psi = backbone_dihedral_atoms(system.topology)
    ref = np.stack([dihedrals(data.positions, phi), dihedrals(data.positions, psi)], axis=1)
    runs = [learned_md(system, result.params, energy_fn, size["md_steps"], size["md_every"],
                       temperature=args.temperature, seed=100 + r) for r in range(size["md_replicas"])]
    md = np.concatenate([frames for frames, _ in runs])
    learned = np.stack([dihedrals(md, phi), dihedrals(md, psi)], axis=1)
    timings["learned_md_s"] = time.perf_counter() - t
    summary = {"model": args.model, "frames": len(data), "train_frames": len(train_set),
               "validation_frames": len(val_set), "steps": cfg.steps,
               "val_force_rmse_before_kjmolnm": before["force_rmse_kjmolnm"],
               "val_force_rmse_kjmolnm": after["force_rmse_kjmolnm"],
               "val_energy_mae_kjmol": after["energy_mae_kjmol"],
               "reference_force_rms_kjmolnm": float(np.sqrt(np.mean(val_set.forces ** 2))),
               "learned_md_frames": len(learned), "learned_md_errors": [e for _, e in runs if e], "phi_psi_js_divergence_bits": js_divergence_2d(ref, learned),
               "timings_s": timings}
    with open(os.path.join(args.out, "example-summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
