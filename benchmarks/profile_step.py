"""Benchmark ``profile-step``: where one MD step's time goes (DHFR JAC with PME by default).

    diffmd bench profile_step [--system dhfr-pme] [--precision mixed] [--repeats 5]

The system is set up exactly as in ``diffmd bench md`` (``md.prepare_diffmd``). Each part
of a step is wrapped in its own ``jax.jit`` function of explicit arrays and timed after one
compiling call: ``block_until_ready`` around each call, median of ``--repeats`` calls. The
parts, each with its forces (``value_and_grad`` with respect to positions) where it is a
force term:

- neighbor table: the per-step displacement check (no rebuild) and a full rebuild
  (``update_neighbors`` with every atom moved past half the skin);
- nonbonded direct space on the table: Lennard-Jones alone, the erfc-screened Coulomb alone
  (``pme_direct_energy``), and both in the one pass the step runs
  (``table_energies(..., ewald_alpha=...)``);
- PME reciprocal space as the MD step runs it (``pme_reciprocal_energy``), then its
  stages one by one, forward only: B-spline set-up and charge spreading, the forward
  FFT, the convolution with the influence function (computed on the fly, as the kernel
  does), the inverse FFT, and the interpolation of forces back to the atoms (gather of
  each atom's 5x5x5 block and the B-spline contractions). The stages are private
  functions of ``diffmd.kernels.pme_reciprocal`` called one at a time; their sum misses the fusion
  XLA does across stages (and adds launches), so it is compared with the whole;
- the rest of the Coulomb/LJ model: PME exclusion correction and 1-4 pairs;
- bonded terms (bonds, angles, torsions, CMAP);
- the whole energy+forces (``value_and_grad`` of the energy function);
- constraints: SETTLE and SHAKE on positions, SETTLE and RATTLE on velocities;
- the integrator's own update (LangevinMiddle with forces given and no constraints);
- a whole step without neighbor maintenance (``integrator.step`` with forces and
  constraints), stepped ``--steps`` times, each followed by the neighbor check on the
  host side, which counts the rebuilds a production run would do;
- a whole production step: ``diffmd.md.make_chunk`` over ``--steps`` steps (neighbor
  check every step, rebuild plus a force refresh when due), per step.

The table gives each part in ms and as a percentage of the production step.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from . import _harness as h
from .md import SYSTEMS, prepare_diffmd, system_dt

DEFAULT_SYSTEM = "dhfr-pme"


def _timed(fn, *args, repeats: int) -> dict:
    """Compile-and-run once, then the median of ``repeats`` timed calls [ms]."""
    import jax

    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return {"ms": 1e3 * statistics.median(times), "ms_all": [1e3 * t for t in times], "first_call_s": first,
            "out": out}


def _pme_stages(positions, charges, box, alpha, grid, compute):
    """Jitted functions for the PME reciprocal stages and their example inputs (forward only)."""
    import math

    import jax
    import jax.numpy as jnp

    from diffmd.kernels import pme_reciprocal as pme

    x = positions.astype(compute)
    q = charges.astype(compute)
    b = jnp.tril(box.astype(compute))  # the reduced box, as the kernel sees it
    a = jnp.asarray(alpha, compute)

    @jax.jit
    def spread(x):
        _, base, w, _ = pme._spline_setup(x, b, grid)
        blocks = q[:, None, None, None] * w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]
        return pme._spread(base, blocks, grid)

    fft = jax.jit(jnp.fft.rfftn)

    @jax.jit
    def convolve(structure):
        weights, mult = pme._influence(b, a, grid)
        s2 = jnp.real(structure) ** 2 + jnp.imag(structure) ** 2
        return weights * structure, 0.5 * jnp.sum(mult * weights * s2)

    inverse = jax.jit(lambda ws: jnp.fft.irfftn(ws, s=grid) * math.prod(grid))

    @jax.jit
    def interpolate(x, potential):
        recip, base, w, dw = pme._spline_setup(x, b, grid)
        vals = pme._interpolate(base, potential)  # (N, 5, 5, 5)
        wx, wy, wz, dwx, dwy, dwz = w[:, 0], w[:, 1], w[:, 2], dw[:, 0], dw[:, 1], dw[:, 2]
        # contracted z, then y, then x, as the kernel's derivative rule does
        t_z = jnp.einsum("nabc,nc->nab", vals, wz)
        t_dz = jnp.einsum("nabc,nc->nab", vals, dwz)
        t_yz = jnp.einsum("nab,nb->na", t_z, wy)
        du = jnp.stack([jnp.einsum("na,na->n", t_yz, dwx),
                        jnp.einsum("na,na->n", jnp.einsum("nab,nb->na", t_z, dwy), wx),
                        jnp.einsum("na,na->n", jnp.einsum("nab,nb->na", t_dz, wy), wx)], axis=1)
        return (q[:, None] * du * jnp.asarray(grid, x.dtype)[None, :]) @ recip.T

    return spread, fft, convolve, inverse, interpolate, x


def profile(system: str, precision: str, repeats: int, steps: int, log) -> dict:
    """Time the parts of one MD step of ``system``; returns ``{part: {"ms", ...}}`` and set-up facts."""
    mol, prep = prepare_diffmd(system, precision)  # sets JAX's float64 switch first
    import jax
    import jax.numpy as jnp
    import numpy as np

    import diffmd
    from diffmd.md import make_chunk
    from diffmd.md import inverse_masses, make_force_fn
    from diffmd.kernels import bonded, constraints as kc, nonbonded as knb, pme
    from diffmd.kernels.neighbors import neighbors_moved
    from diffmd.kernels.precision import cast_floats
    from diffmd.kernels.settle import settle_positions, settle_velocities

    energy_fn, params, box, cons = prep.energy_fn, prep.params, prep.box, prep.constraints
    if energy_fn.nonbonded != "pme":
        raise diffmd.InputError(f"profile-step profiles PME systems; {system!r} uses {energy_fn.nonbonded!r}")
    prec = energy_fn.precision
    cdt, acc = prec.compute, prec.accumulate
    terms = energy_fn.terms_
    st0, nb0 = prep.carry.state, prep.carry.neighbors
    x0 = st0.positions
    p = cast_floats(params, cdt)
    pb = cast_floats(params, acc)
    boxc, boxa = box.astype(cdt), box.astype(acc)
    idx = nb0.idx
    cutoff, alpha, grid = energy_fn.cutoff, energy_fn.pme_alpha, energy_fn.pme_grid
    dt = system_dt(system)
    info = {"n_atoms": mol.n_atoms, "precision": precision, "dt_ps": dt, "pme_grid": list(grid),
            "pme_alpha": alpha, "neighbor_capacity": int(nb0.capacity), "skin": float(nb0.skin),
            "n_constraints_pairs": int(np.sum(np.asarray(cons.pair_mask))),
            "n_waters": int(np.sum(np.asarray(cons.water_mask))), "device": str(jax.devices()[0])}
    log(f"{system}: {mol.n_atoms} atoms, {precision}, PME grid {grid}, table capacity {nb0.capacity}, "
        f"{info['n_waters']} SETTLE waters, {info['n_constraints_pairs']} SHAKE pairs; {info['device']}")

    def forces_of(energy):
        return jax.jit(jax.value_and_grad(energy))

    parts: dict = {}

    def run(name, fn, *args):
        res = _timed(fn, *args, repeats=repeats)
        parts[name] = {k: v for k, v in res.items() if k != "out"}
        log(f"  {name}: {res['ms']:.2f} ms (first call {res['first_call_s']:.1f} s)")
        return res["out"]

    # -- neighbor table ------------------------------------------------------------------
    update = jax.jit(diffmd.update_neighbors)
    shifted = x0 + jnp.asarray([0.6 * nb0.skin, 0.0, 0.0], x0.dtype)  # every atom past half the skin
    rebuilt = run("neighbor rebuild", update, nb0, shifted, box)
    if not np.array_equal(np.asarray(rebuilt.reference_positions), np.asarray(shifted)):
        raise RuntimeError("update_neighbors did not rebuild: the rebuild timing would measure a no-op")
    # the check alone, as a step runs it: a max-reduction over the displacements (timing
    # ``update_neighbors`` without a rebuild would add a copy of the whole table, which a jitted
    # call must return but a step's scan carry does not make)
    run("neighbor check (no rebuild)", jax.jit(neighbors_moved), nb0, x0, box)

    # -- force terms, each with its forces -------------------------------------------------
    # the table and the parameters are arguments, as in the step (only the topology is a constant there)
    def lj(x, idx, p):
        return knb.table_energies(x.astype(cdt), boxc, idx, p.charges, terms.atom_type, p.lj_a, p.lj_b,
                                  cutoff=cutoff, accumulate=acc, coulomb=False)[1]

    def lj_coulomb_fused(x, idx, p):
        e_c, e_lj = knb.table_energies(x.astype(cdt), boxc, idx, p.charges, terms.atom_type, p.lj_a, p.lj_b,
                                       cutoff=cutoff, accumulate=acc, ewald_alpha=alpha)
        return e_c + e_lj

    def coulomb_direct(x, idx, p):
        return pme.pme_direct_energy(x.astype(cdt), p.charges, boxc, idx, alpha, cutoff, compute_dtype=cdt,
                                     accumulate_dtype=acc)

    def reciprocal(x, p):
        return pme.pme_reciprocal_energy(x.astype(cdt), p.charges, boxc, alpha, grid, compute_dtype=cdt,
                                         accumulate_dtype=acc)

    def exclusions_14(x, p, pb):
        e_excl = pme.pme_exclusion_correction(x.astype(cdt), p.charges, boxc, terms.exclusions, alpha,
                                              compute_dtype=cdt, accumulate_dtype=acc)
        c14, lj14 = knb.pair_energies(x.astype(acc), boxa, terms.pair14_idx, pb.charges, terms.atom_type, pb.lj_a,
                                      pb.lj_b, pb.coulomb14_scale, pb.lj14_scale, accumulate=acc)
        return e_excl + c14 + lj14

    def bonded_terms(x, pb):
        xb = x.astype(acc)
        return (bonded.bond_energy(xb, boxa, terms.bond_idx, pb.bond_k, pb.bond_r0)
                + bonded.angle_energy(xb, boxa, terms.angle_idx, pb.angle_k, pb.angle_theta0)
                + bonded.torsion_energy(xb, boxa, terms.torsion_idx, terms.torsion_periodicity, pb.torsion_k,
                                        pb.torsion_phase)
                + energy_fn._cmap(pb, xb, boxa).astype(acc))

    run("direct space: Lennard-Jones", forces_of(lj), x0, idx, p)
    run("direct space: Coulomb erfc", forces_of(coulomb_direct), x0, idx, p)
    run("direct space: LJ + Coulomb erfc, one pass (as in the step)", forces_of(lj_coulomb_fused), x0, idx, p)
    run("PME reciprocal (as in the step)", forces_of(reciprocal), x0, p)
    spread, fft, convolve, inverse, interpolate, xc = _pme_stages(x0, p.charges, box, alpha, grid, cdt)
    charge_grid = run("  PME stage: spread", spread, xc)
    structure = run("  PME stage: fft", fft, charge_grid)
    convolved, _ = run("  PME stage: convolve", convolve, structure)
    potential = run("  PME stage: inverse", inverse, convolved)
    run("  PME stage: interpolate", interpolate, xc, potential)
    run("exclusion correction + 1-4 pairs", forces_of(exclusions_14), x0, p, pb)
    run("bonded (bonds, angles, torsions, CMAP)", forces_of(bonded_terms), x0, pb)
    energy, grad = run("energy+forces (whole model)", jax.jit(jax.value_and_grad(energy_fn, argnums=1)),
                       params, x0, box, nb0)
    forces = -grad

    # -- constraints, on the inputs a step gives them ----------------------------------------
    invm = inverse_masses(st0.masses)
    v_kick = st0.velocities + dt * forces.astype(x0.dtype) * invm[:, None]
    x_free = x0 + dt * v_kick  # unconstrained drift: what the position solves have to correct
    c = cons
    run("constraints: SETTLE positions", jax.jit(
        lambda r, x: settle_positions(r, x, invm, c.water, c.water_distances, c.water_mask, box)), x0, x_free)
    run("constraints: SHAKE positions", jax.jit(
        lambda r, x: kc.shake_positions(r, x, invm, c.pairs, c.lengths, c.pair_mask, box, c.tolerance,
                                        c.max_iterations)), x0, x_free)
    run("constraints: SETTLE velocities", jax.jit(
        lambda x, v: settle_velocities(x, v, invm, c.water, c.water_mask, box)), x0, v_kick)
    run("constraints: RATTLE velocities", jax.jit(
        lambda x, v: kc.rattle_velocities(x, v, invm, c.pairs, c.pair_mask, box, c.velocity_tolerance,
                                          c.max_iterations)), x0, v_kick)

    # -- the integrator alone, then whole steps ------------------------------------------------
    integ = prep.integrator
    run("integrator update (forces given, no constraints)",
        jax.jit(lambda st, e, f: integ.step(st, lambda _: (e, f), None, box)), st0, energy, forces)
    step = jax.jit(lambda st, nb: integ.step(st, make_force_fn(energy_fn, params, box, nb), cons, box))
    res = _timed(step, st0, nb0, repeats=1)
    st, nb = res["out"], nb0
    times, rebuilds = [], 0
    for _ in range(steps):
        start = time.perf_counter()
        st = jax.block_until_ready(step(st, nb))
        times.append(time.perf_counter() - start)
        new = update(nb, st.positions, box)
        rebuilds += int(bool(jnp.any(new.reference_positions != nb.reference_positions)))
        nb = new
    parts["whole step without neighbor update"] = {"ms": 1e3 * statistics.median(times),
                                                   "ms_all": [1e3 * t for t in times],
                                                   "first_call_s": res["first_call_s"]}
    info["rebuilds_in_steps"] = {"steps": steps, "rebuilds": rebuilds,
                                 "constraint_failed": bool(st.constraint_failed)}
    log(f"  whole step without neighbor update: {parts['whole step without neighbor update']['ms']:.1f} ms; "
        f"{rebuilds} rebuilds in {steps} steps")
    chunk = jax.jit(make_chunk(integ, energy_fn, steps))
    carry = prep.carry
    start = time.perf_counter()
    first_carry, _ = jax.block_until_ready(chunk(carry, params, box, cons))
    compile_s = time.perf_counter() - start
    chunk_times = []
    for _ in range(max(1, repeats // 2)):
        start = time.perf_counter()
        jax.block_until_ready(chunk(carry, params, box, cons))
        chunk_times.append(time.perf_counter() - start)
    parts["whole production step (make_chunk)"] = {"ms": 1e3 * statistics.median(chunk_times) / steps,
                                                   "ms_all": [1e3 * t / steps for t in chunk_times],
                                                   "first_call_s": compile_s}
    info["chunk_overflow"] = bool(first_carry.neighbors.overflow)
    log(f"  whole production step: {parts['whole production step (make_chunk)']['ms']:.1f} ms "
        f"(chunk of {steps} steps, first call {compile_s:.1f} s)")
    return {"info": info, "parts": parts}


# Rows of the table: (part, note). Indented names are stages inside the row above them.
ROWS = [
    ("neighbor check (no rebuild)", "every step: max displacement vs half the skin"),
    ("neighbor rebuild", "when due; the production step then also recomputes the forces"),
    ("direct space: Lennard-Jones", "energy+forces on the (N, K) table, alone"),
    ("direct space: Coulomb erfc", "energy+forces on the (N, K) table (stand-alone kernel)"),
    ("direct space: LJ + Coulomb erfc, one pass (as in the step)", "energy+forces, fused"),
    ("PME reciprocal (as in the step)", "energy+forces, custom VJP"),
    ("  PME stage: spread", "B-spline set-up + charge spreading"),
    ("  PME stage: fft", "forward rfftn"),
    ("  PME stage: convolve", "influence function (computed per call) x S(k), energy"),
    ("  PME stage: inverse", "inverse irfftn"),
    ("  PME stage: interpolate", "B-spline set-up again + gather + force contraction"),
    ("exclusion correction + 1-4 pairs", "energy+forces"),
    ("bonded (bonds, angles, torsions, CMAP)", "energy+forces, accumulate dtype"),
    ("energy+forces (whole model)", "jit(value_and_grad(energy_fn))"),
    ("constraints: SETTLE positions", ""),
    ("constraints: SHAKE positions", "iterative"),
    ("constraints: SETTLE velocities", ""),
    ("constraints: RATTLE velocities", "conjugate gradients"),
    ("integrator update (forces given, no constraints)", "LangevinMiddle V R O R, RNG"),
    ("whole step without neighbor update", "integrator.step with forces and constraints"),
    ("whole production step (make_chunk)", "per step, rebuilds at their real rate"),
]


def table(result: dict) -> str:
    parts = result["parts"]
    whole = parts["whole production step (make_chunk)"]["ms"]
    rows = []
    for name, note in ROWS:
        if name in parts:
            ms = parts[name]["ms"]
            rows.append([name.replace("  ", "&nbsp;&nbsp;", 1) if name.startswith("  ") else name,
                         f"{ms:.2f}", f"{100 * ms / whole:.1f}", note])
    info = result["info"]
    rb = info["rebuilds_in_steps"]
    per_step = parts["neighbor rebuild"]["ms"] + parts["energy+forces (whole model)"]["ms"]
    if rb["rebuilds"]:
        amortized = per_step * rb["rebuilds"] / rb["steps"]
        rows.append(["rebuild + force refresh, amortized", f"{amortized:.2f}", f"{100 * amortized / whole:.1f}",
                     f"{rb['rebuilds']} rebuilds in {rb['steps']} steps"])
    return h.markdown_table(["part", "ms", "% of production step", "what"], rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffmd bench profile_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--system", default=DEFAULT_SYSTEM, help=f"a PME system of the md benchmark "
                   f"({', '.join(k for k, v in SYSTEMS.items() if v.get('nonbonded') == 'pme')})")
    p.add_argument("--precision", default="mixed", choices=("mixed", "single", "double"))
    p.add_argument("--repeats", type=int, default=5, help="timed calls per part after the compiling one")
    p.add_argument("--steps", type=int, default=20, help="steps of the whole-step measurements (default 20)")
    p.add_argument("--results", default=None, help=f"Markdown file to append to (default {h.RESULTS})")
    p.add_argument("--no-record", action="store_true", help="do not append to a results file")
    p.add_argument("--json", default=None, help="also write the full record as JSON here")
    return p


def main(argv=None) -> int:
    from diffmd import InputError

    args = build_parser().parse_args(argv)
    if args.system not in SYSTEMS or SYSTEMS[args.system].get("nonbonded") != "pme":
        raise InputError(f"--system must be a PME system of the md benchmark, got {args.system!r}")
    if args.repeats < 1 or args.steps < 1:
        raise InputError(f"--repeats and --steps must be >= 1, got {args.repeats} and {args.steps}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    env = h.environment()
    result = profile(args.system, args.precision, args.repeats, args.steps, log)
    env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    env["source_end"] = h.source_fingerprint()
    result["memory"] = h.memory_mib()
    info = result["info"]
    settings = (f"{args.system}: {SYSTEMS[args.system]['description']}; precision {args.precision}; PME grid "
                f"{'x'.join(map(str, info['pme_grid']))}, table capacity {info['neighbor_capacity']}, "
                f"{info['n_waters']} SETTLE waters and {info['n_constraints_pairs']} SHAKE pairs; medians of "
                f"{args.repeats} calls after a compiling one (whole steps: {args.steps} steps); device "
                f"{info['device']}; peak RSS of the profiling process {result['memory'].get('peak_mib', 0):.0f} MiB.")
    body = settings + "\n\n" + table(result)
    print("\n".join(h.environment_lines(env)) + "\n\n" + body)
    if not args.no_record:
        path = args.results or h.RESULTS
        command = "diffmd bench profile_step " + " ".join(shlex.quote(a) for a in (argv or []))
        h.append_results(path, "MD step profile", env, body, command=command.strip())
        log(f"appended to {path}")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, **result}, indent=2, default=float))
    return 0
