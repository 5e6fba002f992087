"""Example: adjust a few of a guest's partial charges so its binding free energy moves toward a target.

The CB7-B2 host-guest (bundled) in OBC2 implicit solvent. Each round:

1. ``diffmd.free_energy.abfe`` computes dG_bind at the current charges (complex and solvent
   legs, lambda windows as one vmapped ensemble with Hamiltonian exchange, MBAR), keeping
   the frames MBAR used;
2. ``result.gradient`` gives dG/dq for every guest charge by the end-state identity
   (for each leg <dU_1/dq>_1 - <dU_0/dq>_0 with MBAR weights, summed over the cycle);
3. the gradient of the chosen few charges is projected onto the moves that keep the guest's
   net charge (minus its mean), and the charges take the step that a linear model says
   reaches the target, shortened while the frames' reweighted prediction at the new charges
   (``result.reweight``) has too few effective samples or overshoots the target by more than
   the prediction's own error;
4. the next round re-simulates at the new charges, so the "after" dG is a fresh simulation,
   not a prediction.

The atoms adjusted are the guest's heavy atoms with the largest projected gradient in the
first round (``--atoms``). The target defaults to the first dG plus ``--shift`` kcal/mol.

Run: python examples/fit_binding.py              (3 rounds of 10 windows x 40 ps per leg)
     python examples/fit_binding.py --quick      (1 step, 8 windows x 10 ps: a few minutes on 2 cores)
Writes OUT/summary.json (and each round's abfe output under OUT/round-N/).
"""

import argparse
import dataclasses
import json
import os
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import diffmd  # noqa: E402
from diffmd.free_energy import abfe, ligand_charges  # noqa: E402

KCAL = 4.184  # kJ per kcal


def protocol(quick: bool) -> dict:
    """abfe settings (4 fs with hydrogen mass 1.5 amu, as the openmmtools comparison in the tests)."""
    common = dict(implicit_solvent="obc2", restraint="boresch", dt=0.004, hydrogen_mass=1.5, equilibration=0.1,
                  steps_per_iteration=50, keep_frames=True)
    if quick:
        return dict(common, windows=8, ns_per_window=0.010)
    return dict(common, windows=10, ns_per_window=0.040)


def with_ligand_charges(system, ligand, charges):
    """The system with the ligand's charges replaced [e]."""
    q = np.asarray(system.params.charges, np.float64).copy()
    q[ligand] = charges
    return dataclasses.replace(system, params=dataclasses.replace(system.params, charges=q))


def choose_atoms(system, ligand, gradient, count: int) -> np.ndarray:
    """Positions (in the ligand) of the ``count`` heavy atoms with the largest net-charge-projected gradient."""
    heavy = np.flatnonzero(np.asarray(system.topology.elements)[ligand] != 1)  # atomic numbers
    projected = gradient[heavy] - gradient[heavy].mean()
    return np.sort(heavy[np.argsort(-np.abs(projected))[:count]])


def step(result, charges, params_fn, atoms, target_kj, max_change: float, min_effective: float):
    """One net-charge-preserving step of the chosen charges toward the target.

    Returns (new charges, step record). The direction is the projected gradient; its length
    the linear model's, then halved while the reweighted prediction has fewer than
    ``min_effective`` effective samples at an end state or lands past the target by more
    than its error.
    """
    grad = np.asarray(result.gradient(params_fn, charges))  # (L,) kJ/mol per e
    g = grad[atoms] - grad[atoms].mean()  # sum of the changes is zero: the net charge is kept
    dq = np.zeros_like(grad)
    dq[atoms] = (target_kj - result.dg) * g / np.dot(g, g)  # reaches the target if dG were linear
    dq *= min(1.0, max_change / np.max(np.abs(dq)))
    for _ in range(8):
        predicted = result.reweight(params_fn(charges + dq))
        effective = min(min(v) for v in predicted["effective_samples"].values())
        past = (predicted["dg"] - target_kj) * np.sign(target_kj - result.dg) > predicted["dg_error"]
        if effective >= min_effective and not past:
            break
        dq *= 0.5
    record = {"gradient_kcal_per_mol_per_e": (grad / KCAL).tolist(),
              "projected_gradient_kcal_per_mol_per_e": (g / KCAL).tolist(),
              "linear_prediction_kcal_per_mol": (result.dg + float(grad @ dq)) / KCAL,
              "reweighted_prediction_kcal_per_mol": predicted["dg_kcal"],
              "reweighted_prediction_error_kcal_per_mol": predicted["dg_error_kcal"],
              "effective_samples": predicted["effective_samples"], "charge_change_e": dq[atoms].tolist()}
    return charges + dq, record


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 step on a short protocol (a few minutes)")
    parser.add_argument("--steps", type=int, default=None, help="gradient steps (default 3, quick 1)")
    parser.add_argument("--target", type=float, default=None, help="target dG [kcal/mol] (default: first + shift)")
    parser.add_argument("--shift", type=float, default=2.0, help="target minus the first dG [kcal/mol]")
    parser.add_argument("--atoms", type=int, default=4, help="how many guest charges to adjust")
    parser.add_argument("--max-change", type=float, default=0.15, help="largest charge change per step [e]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="fit_binding_out")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else (1 if args.quick else 3)
    settings = protocol(args.quick)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()

    complex_ = diffmd.load_amber(*diffmd.data.cb7_b2())
    ligand = diffmd.free_energy._selection.residue_atoms(complex_, "B2")
    names = np.asarray(complex_.topology.atom_names)[ligand]
    charges0 = np.asarray(complex_.params.charges, np.float64)[ligand]
    charges, atoms, target_kj, rounds = charges0.copy(), None, None, []
    for r in range(steps + 1):
        t = time.perf_counter()
        system = with_ligand_charges(complex_, ligand, charges)
        result = abfe(system, "B2", seed=args.seed + r, out=os.path.join(args.out, f"round-{r}"),
                      progress=not args.no_progress, **settings)
        record = {"round": r, "dg_kcal_per_mol": result.dg_kcal, "dg_error_kcal_per_mol": result.dg_error / KCAL,
                  "charges_e": charges.tolist()}
        print(f"round {r}: dG = {result.dg_kcal:.2f} +- {result.dg_error / KCAL:.2f} kcal/mol", flush=True)
        if target_kj is None:
            target = args.target if args.target is not None else result.dg_kcal + args.shift
            target_kj = target * KCAL
        if r < steps:
            q, params_fn = ligand_charges(result)
            if atoms is None:
                atoms = choose_atoms(complex_, ligand, np.asarray(result.gradient(params_fn, q)), args.atoms)
            min_effective = 0.5 * min(result.complex.samples_per_window, result.solvent.samples_per_window)
            charges, step_record = step(result, np.asarray(q), params_fn, atoms, target_kj, args.max_change,
                                        min_effective)
            record.update(step_record)
            print(f"  step: {', '.join(f'{names[a]} {d:+.3f}' for a, d in zip(atoms, record['charge_change_e']))} e;"
                  f" reweighted prediction {record['reweighted_prediction_kcal_per_mol']:.2f} +- "
                  f"{record['reweighted_prediction_error_kcal_per_mol']:.2f} kcal/mol", flush=True)
        record["wall_seconds"] = time.perf_counter() - t
        rounds.append(record)
        del result

    first, last = rounds[0], rounds[-1]
    summary = {
        "system": "CB7-B2, OBC2", "protocol": {k: v for k, v in settings.items() if k != "keep_frames"},
        "target_kcal_per_mol": target_kj / KCAL, "atoms": [str(names[a]) for a in atoms],
        "dg_before_kcal_per_mol": first["dg_kcal_per_mol"], "dg_before_error_kcal_per_mol": first["dg_error_kcal_per_mol"],
        "dg_after_kcal_per_mol": last["dg_kcal_per_mol"], "dg_after_error_kcal_per_mol": last["dg_error_kcal_per_mol"],
        "predicted_after_kcal_per_mol": rounds[-2]["reweighted_prediction_kcal_per_mol"],
        "predicted_after_error_kcal_per_mol": rounds[-2]["reweighted_prediction_error_kcal_per_mol"],
        "net_charge_before_e": float(charges0.sum()), "net_charge_after_e": float(charges.sum()),
        "charges_before_e": charges0.tolist(), "charges_after_e": charges.tolist(),
        "rounds": rounds, "wall_seconds": time.perf_counter() - t0}
    with open(os.path.join(args.out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1)
    print(f"target {summary['target_kcal_per_mol']:.2f}: dG {first['dg_kcal_per_mol']:.2f} +- "
          f"{first['dg_error_kcal_per_mol']:.2f} -> {last['dg_kcal_per_mol']:.2f} +- {last['dg_error_kcal_per_mol']:.2f}"
          f" kcal/mol (predicted {summary['predicted_after_kcal_per_mol']:.2f}); net charge "
          f"{summary['net_charge_before_e']:+.4f} -> {summary['net_charge_after_e']:+.4f} e; "
          f"{summary['wall_seconds']:.0f} s")
    return summary


if __name__ == "__main__":
    main()
