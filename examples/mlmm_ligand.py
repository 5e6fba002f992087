"""Hybrid ML/MM of a host-guest complex: train a neural potential on the guest, run the complex with it.

No pretrained potential ships with a pip package, so this example makes its own:

1. Cut the guest B2 out of the bundled CB7-B2 complex (``diffmd.free_energy.ligand_system``, the
   guest with its own Amber terms) and generate frames of it in vacuum with diffmd's dataset
   generator (Langevin replicas on a temperature ladder, every bond constrained, labelled with Amber's
   energies and forces).
2. Train a small SchNet on them with diffmd's trainer and save it as ``diffmd train`` does.
3. Run the complex in ML/MM (``diffmd.train.mlmm_model``): the model describes the guest's
   internal energy, Amber (OBC2 implicit solvent) the host, the host-guest interactions and the
   solvation; the guest's internal Amber terms are removed (mechanical embedding, as openmm-ml's
   ``createMixedSystem``). Report the energies of the run, how far the model's guest energy is
   from the Amber internal energy it replaces on the frames the run visits, and the energy at
   several coupling values lambda (0 = pure Amber, 1 = ML/MM) evaluated as one vmapped batch.

The same run from the command line, with the model folder this writes::

    diffmd run complex-vacuum.prmtop complex-vacuum.inpcrd --model OUT/model --ml-atoms "resname B2" \\
        --implicit-solvent obc2 --constraints allbonds --steps 2000 --dt 0.002

    python examples/mlmm_ligand.py --quick     # a few minutes on two CPU cores
    python examples/mlmm_ligand.py             # more data, training and MD
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)  # Amber labels and the MM part in double precision

import numpy as np  # noqa: E402

import diffmd  # noqa: E402
from diffmd import datasets, train  # noqa: E402
from diffmd.free_energy import ligand_system, select_atoms  # noqa: E402
from diffmd.io import FramesReporter  # noqa: E402

SIZES = {
    "quick": dict(frames=320, every=20, replicas=8, equilibrate=200, features=32, interactions=2, n_rbf=12,
                  steps=800, batch_size=16, learning_rate=3e-3, md_steps=400, md_every=20),
    "full": dict(frames=4000, every=50, replicas=8, equilibrate=2000, features=64, interactions=3, n_rbf=20,
                 steps=5000, batch_size=32, learning_rate=1e-3, md_steps=20000, md_every=100),
}
LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)
DT = 0.002  # [ps] of the ML/MM run (all bonds constrained)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few minutes of work")
    parser.add_argument("--resname", default="B2", help="residue name of the guest (the ML region)")
    parser.add_argument("--temperature", type=float, default=300.0, help="[K] of the ML/MM run")
    parser.add_argument("--out", default="mlmm-ligand-out", help="output folder")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    timings = {}
    complex_ = diffmd.load_amber(*diffmd.data.cb7_b2())
    guest = select_atoms(complex_, f"resname {args.resname}")
    alone = ligand_system(complex_, guest)  # the guest in the complex's atom order, with its own Amber terms
    os.makedirs(args.out, exist_ok=True)

    # 1. data: the guest in vacuum, Amber labels (its internal energy: what the ML model replaces)
    t = time.perf_counter()
    ladder = np.geomspace(300.0, 600.0, size["replicas"]).tolist()
    # every bond constrained, here and in the ML/MM run: a small network then need not reproduce the
    # stiff bond stretches (their force errors would heat the run), only angles, torsions and pairs
    data = datasets.generate(alone, size["frames"], size["every"], replicas=size["replicas"], temperature=ladder,
                             equilibrate=size["equilibrate"], seed=1, dt=0.001, constraints="allbonds",
                             progress=args.progress)
    timings["generate_s"] = time.perf_counter() - t
    train_set, val_set = datasets.split(data, 0.1, seed=0)

    # 2. training, saved as `diffmd train` saves models; forces weigh more than in the alanine example
    # (0.1, not 0.01): stable dynamics of the guest needs its forces more than exact energies
    t = time.perf_counter()
    params, energy_fn, spec = train.build_model(
        dict(kind="schnet", cutoff=0.5, features=size["features"], interactions=size["interactions"],
             n_rbf=size["n_rbf"]), train_set)
    before = train.evaluate(params, energy_fn, val_set)
    steps = size["steps"]
    config = train.TrainConfig(steps=steps, batch_size=size["batch_size"], learning_rate=size["learning_rate"],
                               schedule="warmup_cosine", warmup_steps=steps // 20,
                               final_learning_rate=size["learning_rate"] / 50, validate_every=max(steps // 10, 1),
                               energy_weight=1.0, force_weight=0.1)
    params = train.train(params, energy_fn, train_set, val_set, config, out=os.path.join(args.out, "training"),
                         progress=args.progress).params
    after = train.evaluate(params, energy_fn, val_set)
    model_dir = os.path.join(args.out, "model")
    train.save_model(model_dir, params, spec)
    timings["train_s"] = time.perf_counter() - t

    # 3. ML/MM of the complex: the saved model on the guest, Amber + OBC2 for the rest
    t = time.perf_counter()
    mlmm = train.mlmm_model(model_dir, complex_, guest, implicit_solvent="obc2", precision="double")
    frames = FramesReporter(size["md_every"])
    result = diffmd.simulate(complex_, size["md_steps"], potential=mlmm, dt=DT, constraints="allbonds",
                             temperature=args.temperature,
                             precision="double", minimize=True, minimize_max_iterations=50,
                             report_every=size["md_every"], reporters=[frames], out=os.path.join(args.out, "md"),
                             throw=False, progress=args.progress)
    timings["mlmm_md_s"] = time.perf_counter() - t
    visited = np.array(frames.frames)
    mlmm_params, mlmm_fn = mlmm

    @jax.jit
    def split(x):
        return mlmm_fn.components(mlmm_params, x, None, None)

    per_frame = [{k: float(v) for k, v in split(jnp.asarray(x)).items()} for x in visited]
    ml_minus_mm = np.array([p["ml"] - p["mm_internal"] for p in per_frame])

    # the coupling lambda as a batch axis: pure Amber (0) to ML/MM (1), at the last frame
    def at(lam, x):
        return mlmm_fn(dataclasses.replace(mlmm_params, lambda_interpolate=lam), x, None, None)

    last = jnp.asarray(visited[-1])
    by_lambda = jax.jit(jax.vmap(at, in_axes=(0, None)))(jnp.asarray(LAMBDAS), last)
    summary = {
        "ml_atoms": int(len(guest)), "complex_atoms": complex_.n_atoms, "frames": len(data),
        "validation_frames": len(val_set), "train_steps": steps,
        "val_energy_mae_before_kjmol": before["energy_mae_kjmol"], "val_energy_mae_kjmol": after["energy_mae_kjmol"],
        "val_force_rmse_before_kjmolnm": before["force_rmse_kjmolnm"],
        "val_force_rmse_kjmolnm": after["force_rmse_kjmolnm"],
        "md_steps": size["md_steps"], "md_error": None if result.error is None else str(result.error),
        "md_frames": len(visited),
        "md_potential_kjmol": [float(e) for e in result.potential_energy],
        "md_temperature_k": [float(x) for x in result.temperature],
        # the guest's energy from the model and from the Amber terms it replaces, on the visited frames
        "ml_minus_mm_internal_mean_kjmol": float(ml_minus_mm.mean()),
        "ml_minus_mm_internal_std_kjmol": float(ml_minus_mm.std()),
        "first_frame_parts_kjmol": per_frame[0], "last_frame_parts_kjmol": per_frame[-1],
        "lambdas": list(LAMBDAS), "energy_by_lambda_last_frame_kjmol": [float(e) for e in by_lambda],
        "model_dir": model_dir, "timings_s": timings,
    }
    with open(os.path.join(args.out, "example-summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    print(f"ML/MM of CB7-B2: the guest ({len(guest)} atoms) from a SchNet trained on {len(train_set)} Amber frames "
          f"(validation force RMSE {before['force_rmse_kjmolnm']:.0f} -> {after['force_rmse_kjmolnm']:.0f} kJ/mol/nm), "
          "the rest Amber + OBC2")
    print(f"  {size['md_steps']} steps of {DT * 1000:g} fs (all bonds constrained) at {args.temperature:g} K: potential energy "
          f"{result.potential_energy[0]:.1f} -> {result.potential_energy[-1]:.1f} kJ/mol, final temperature "
          f"{result.temperature[-1]:.1f} K" + ("" if result.error is None else f" (stopped: {result.error})"))
    print(f"  E_ML - E_MM_internal of the guest over {len(visited)} frames: {ml_minus_mm.mean():.1f} +- "
          f"{ml_minus_mm.std():.1f} kJ/mol")
    print("  energy at lambda " + ", ".join(f"{lam:g}: {float(e):.1f}" for lam, e in zip(LAMBDAS, by_lambda))
          + " kJ/mol (0 = Amber, 1 = ML/MM)")
    return summary


if __name__ == "__main__":
    main()
