"""Train a neural potential on alanine dipeptide frames from Amber MD, then run MD with it.

1. Generate frames with diffmd (vacuum, Amber ff, Langevin, R replicas in one batched ensemble
   on a temperature ladder, 300-600 K by default: hotter frames show the network the geometry
   an MD run can wander into), labelled with the force field's energies and forces.
2. Train SchNet (or PaiNN) by energy and force matching; report energy MAE and force RMSE on
   held-out frames. ``--prior bonded`` learns only what Amber's bonds and angles leave over
   (a summed potential, Delta-learning).
3. Run Langevin MD at ``--temperature`` with the learned potential (``diffmd.simulate(...,
   potential=...)``) and the same runs with Amber, and compare their backbone (phi, psi)
   distributions: Jensen-Shannon divergence of 2-D histograms (bits; 0 = identical, 1 =
   disjoint). A second set of Amber runs with other seeds gives the divergence that finite
   sampling alone produces.

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
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)  # Amber labels in double precision

import numpy as np  # noqa: E402

import diffmd  # noqa: E402
from diffmd import datasets, train  # noqa: E402
from diffmd.potentials.neural import sum_potentials  # noqa: E402
from diffmd.io import FramesReporter  # noqa: E402

SIZES = {
    "quick": dict(frames=240, every=20, replicas=4, equilibrate=100, features=16, interactions=2, n_rbf=12,
                  steps=200, batch_size=16, learning_rate=3e-3, md_steps=1000, md_every=10, md_replicas=1,
                  refine_steps=100),
    "full": dict(frames=8000, every=100, replicas=16, equilibrate=2000, features=64, interactions=3, n_rbf=20,
                 steps=10000, batch_size=32, learning_rate=1e-3, md_steps=50000, md_every=50, md_replicas=4,
                 refine_steps=5000),
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


def basin_populations(angles) -> dict:
    """Shares of (phi, psi) [degrees] frames in alanine dipeptide's basins: C5/beta (phi < 0, psi
    beyond 120 or below -150), C7eq/alpha-R (phi < 0, the rest) and phi > 0 (C7ax/alpha-L)."""
    phi, psi = np.asarray(angles)[:, 0], np.asarray(angles)[:, 1]
    c5 = (phi < 0) & ((psi > 120) | (psi < -150))
    return {"c5_beta": float(c5.mean()), "c7eq_alpha_r": float(((phi < 0) & ~c5).mean()),
            "phi_positive": float((phi >= 0).mean())} if len(phi) else {}


def bonded_prior(system, precision: str):
    """Amber's bond and angle terms alone (charges, Lennard-Jones, torsions and CMAP zeroed): a
    physical prior that keeps bonded geometry sane where the network has seen no data."""
    params, energy_fn = system.energy_fn(nonbonded="nocutoff", precision=precision)
    zeroed = {name: jnp.zeros_like(getattr(params, name)) for name in ("charges", "lj_a", "lj_b", "torsion_k",
                                                                      "cmap_grids")}
    return dataclasses.replace(params, **zeroed), energy_fn


def md_frames(system, params, energy_fn, steps, every, *, temperature, seed):
    """Langevin MD of ``system`` (H-bond constraints, 2 fs, mixed precision) with any potential;
    (F, N, 3) frames every ``every`` steps and the error that stopped the run (or None)."""
    frames = FramesReporter(every)
    result = diffmd.simulate(system, steps, potential=(params, energy_fn), temperature=temperature, seed=seed,
                             precision="mixed", report_every=every, reporters=[frames], throw=False, progress=False)
    # an unstable learned potential stops the run (result.error); the frames up to then still count
    return np.array(frames.frames[1:]).reshape(-1, system.n_atoms, 3), result.error


def md_runs(system, potential, size, *, temperature, seed):
    """``md_replicas`` Langevin runs with ``potential``: their (F, N, 3) frames, (F, 2) (phi, psi) [degrees]
    and the errors that stopped runs."""
    quads = backbone_dihedral_atoms(system.topology)
    runs = [md_frames(system, *potential, size["md_steps"], size["md_every"], temperature=temperature,
                      seed=seed + r) for r in range(size["md_replicas"])]
    frames = np.concatenate([f for f, _ in runs])
    return frames, np.stack([dihedrals(frames, q) for q in quads], axis=1), [e for _, e in runs if e]


def amber_labelled(system, positions) -> datasets.Dataset:
    """Frames labelled with Amber's energies and forces (double precision)."""
    params, energy_fn = system.energy_fn(nonbonded="nocutoff", precision="double")
    energies, forces = datasets.label_frames(energy_fn, params, positions)
    return datasets.Dataset(positions, energies, forces, system.topology.elements)


def minus_prior(system, dataset, prior: str) -> datasets.Dataset:
    """``dataset`` with the prior's energies and forces taken off (what the network learns)."""
    if prior == "none":
        return dataset
    prior_params, prior_fn = bonded_prior(system, "double")
    e_prior, f_prior = datasets.label_frames(prior_fn, prior_params, dataset.positions)
    return dataclasses.replace(dataset, energies=dataset.energies - e_prior, forces=dataset.forces - f_prior)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI size (seconds to a minute of work)")
    parser.add_argument("--model", choices=["schnet", "painn"], default="schnet")
    parser.add_argument("--prior", choices=["none", "bonded"], default="none",
                        help="learn the whole potential, or only what Amber's bonds and angles leave")
    parser.add_argument("--temperature", type=float, default=300.0, help="[K] of the learned and reference MD")
    parser.add_argument("--data-temperatures", type=float, nargs=2, default=(300.0, 600.0), metavar=("LOW", "HIGH"),
                        help="[K] range of the data replicas (a geometric ladder; hotter frames cover more geometry)")
    parser.add_argument("--data", help="reuse frames.npz from an earlier run instead of generating")
    parser.add_argument("--steps", type=int, help="training steps (default: the size's)")
    parser.add_argument("--energy-weight", type=float, default=1.0,
                        help="w_E of the loss (per-atom energy errors in kJ/mol, squared; w_F is 0.01 on forces in "
                             "kJ/mol/nm): basin populations need energies right to well under kT")
    parser.add_argument("--refine", type=int, default=1, metavar="N",
                        help="rounds of: MD with the learned potential, Amber labels for the frames it visited, more "
                             "training on all frames (default 1; 0 for none)")
    parser.add_argument("--init", metavar="DIR", help="take the round-0 model from an earlier run's output folder "
                                                      "(same --data and sizes) instead of training it")
    parser.add_argument("--out", default="train-alanine-out", help="output folder")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args(argv)
    size = dict(SIZES["quick" if args.quick else "full"])
    size["steps"] = args.steps or size["steps"]
    timings = {}
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    os.makedirs(args.out, exist_ok=True)

    t = time.perf_counter()
    if args.data:
        data = datasets.load_npz(args.data)
    else:
        ladder = np.geomspace(*args.data_temperatures, size["replicas"]).tolist()
        data = datasets.generate(system, size["frames"], size["every"], replicas=size["replicas"],
                                 temperature=ladder, equilibrate=size["equilibrate"], seed=1, minimize=False,
                                 progress=args.progress)
        datasets.save_npz(data, os.path.join(args.out, "frames.npz"))
    timings["generate_s"] = time.perf_counter() - t
    train_set, val_set = datasets.split(minus_prior(system, data, args.prior), 0.1, seed=0)

    t = time.perf_counter()
    params, energy_fn, spec = train.build_model(
        dict(kind=args.model, cutoff=0.5, features=size["features"], interactions=size["interactions"],
             n_rbf=size["n_rbf"]), train_set)
    before = train.evaluate(params, energy_fn, val_set)

    def config(steps, learning_rate):
        return train.TrainConfig(steps=steps, batch_size=size["batch_size"], learning_rate=learning_rate,
                                 schedule="warmup_cosine", warmup_steps=steps // 20,
                                 final_learning_rate=learning_rate / 50, validate_every=max(steps // 10, 1),
                                 energy_weight=args.energy_weight, force_weight=0.01)

    if args.init:  # the round-0 model of an earlier run (same sizes and data)
        params, _ = train.load_model(args.init, system.topology.elements)
    else:
        params = train.train(params, energy_fn, train_set, val_set, config(size["steps"], size["learning_rate"]),
                             out=args.out, progress=args.progress).params
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    amber = system.energy_fn(nonbonded="nocutoff", precision="mixed")
    _, ref, _ = md_runs(system, amber, size, temperature=args.temperature, seed=200)
    _, ref2, _ = md_runs(system, amber, size, temperature=args.temperature, seed=300)
    timings["amber_md_s"] = time.perf_counter() - t
    rounds = []
    frames = None  # the learned potential's frames, from the previous round
    for r in range(args.refine + 1):
        if r:  # frames the learned potential visited, labelled by Amber, join the training set
            t = time.perf_counter()
            visited = minus_prior(system, amber_labelled(system, frames), args.prior)
            # frames from a run blowing up carry huge forces that would swamp the loss: only those in the
            # range of the data's own forces (what Langevin dynamics at these temperatures reaches) join
            sane = np.abs(visited.forces).max(axis=(1, 2)) <= np.abs(train_set.forces).max()
            added = int(sane.sum())
            train_set = train_set.concatenate(visited.subset(sane)) if added else train_set
            params = train.train(params, energy_fn, train_set, val_set,
                                 config(size["refine_steps"], size["learning_rate"] / 3),
                                 out=os.path.join(args.out, f"refine-{r}"), progress=args.progress).params
            timings[f"refine_{r}_train_s"] = time.perf_counter() - t
        t = time.perf_counter()
        learned = (params, energy_fn)
        if args.prior == "bonded":
            learned = sum_potentials(bonded_prior(system, "mixed"), learned)
        frames, got, errors = md_runs(system, learned, size, temperature=args.temperature, seed=100 + 10 * r)
        timings[f"learned_md_{r}_s"] = time.perf_counter() - t
        after = train.evaluate(params, energy_fn, val_set)
        rounds.append({"round": r, "train_frames": len(train_set), "frames_added": added if r else 0,
                       "val_force_rmse_kjmolnm": after["force_rmse_kjmolnm"],
                       "val_energy_mae_kjmol": after["energy_mae_kjmol"], "learned_md_frames": len(got),
                       "learned_md_errors": errors, "phi_psi_js_divergence_bits": js_divergence_2d(ref, got),
                       "learned_basins": basin_populations(got)})
    train.save_model(args.out, params, spec)
    np.savez(os.path.join(args.out, "phi_psi.npz"), amber=ref, amber_repeat=ref2, learned=got)
    summary = {"model": args.model, "prior": args.prior, "energy_weight": args.energy_weight, "frames": len(data),
               "validation_frames": len(val_set), "steps": size["steps"], "refine_steps": size["refine_steps"],
               "md_temperature_k": args.temperature, "data_temperatures_k": data.metadata.get("temperature_k"),
               "val_force_rmse_before_kjmolnm": before["force_rmse_kjmolnm"],
               "reference_force_rms_kjmolnm": float(np.sqrt(np.mean(val_set.forces ** 2))),
               "md_steps_per_run": size["md_steps"], "md_runs": size["md_replicas"], "amber_md_frames": len(ref),
               # two independent sets of Amber runs: the divergence that finite sampling alone gives
               "amber_vs_amber_js_divergence_bits": js_divergence_2d(ref, ref2), "amber_basins": basin_populations(ref),
               "amber_repeat_basins": basin_populations(ref2),
               **{k: v for k, v in rounds[-1].items() if k != "round"}, "rounds": rounds, "timings_s": timings}
    with open(os.path.join(args.out, "example-summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
