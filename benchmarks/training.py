"""Benchmark ``training``: neural-potential training steps/s and MD steps/s, diffmd vs jax-md.

    diffmd bench training [--engines diffmd-schnet,jaxmd-gnn,diffmd-painn,jaxmd-nequip] [--quick]

Data: alanine dipeptide (22 atoms, vacuum). ``--frames`` frames are the bundled
coordinates with Gaussian noise (``--noise`` nm per component), labelled with
energies and forces of the bundled Amber model (no cutoff, float64) in the parent
process and handed to every worker as one ``.npz`` file, so every engine trains on
the same frames.

Models (float32 throughout, cutoff ``--cutoff`` nm, neighbor skin 0.1 nm):

- ``diffmd-schnet``: ``potentials.neural.schnet`` (``--features`` wide,
  ``--interactions`` blocks, 20 Gaussian radial functions).
- ``jaxmd-gnn``: ``jax_md.energy.graph_network_neighbor_list`` (the GraphNetwork
  energy of Battaglia et al. as jax-md ships it, dense neighbor format, one-hot
  species as node features), ``--interactions`` message-passing recurrences and
  MLPs of two ``--features``-wide layers. jax-md has no SchNet: this is its
  closest invariant model (edge features from raw displacements, not a radial
  basis with continuous filters), so the two are not the same architecture;
  widths, depth and cutoff match.
- ``diffmd-painn``: ``potentials.neural.painn`` (same sizes as SchNet).
- ``jaxmd-nequip``: ``jax_md.energy.nequip_neighbor_list`` (NequIP, sparse
  neighbor list), hidden irreps ``{features}x0e + {features}x1e``, spherical
  harmonics to l = 2 (its default), ``--interactions`` steps, 8 radial basis
  functions: jax-md's equivariant model, the closest to PaiNN (NequIP's tensor
  products to l = 2 cost more than PaiNN's l <= 1 vector features).

Timed units, each engine in its own worker process (``_harness``), interleaved:

- training: one optax Adam step (learning rate 1e-3) of the energy + force
  matching loss ``mean(((E - E_ref)/N)^2) + 0.01 mean(|F - F_ref|^2)`` (diffmd's
  ``TrainConfig`` weights, ``diffmd.train.make_loss`` for diffmd, the same loss
  written for jax-md) on a batch of ``--batch`` frames, every frame's neighbor
  table rebuilt inside the step, jitted; batches cycle through the data set.
- MD: a block of ``--block`` Langevin steps (300 K, friction 1/ps, 0.5 fs, no
  constraints) with the model after the training rounds as the potential, scaled
  to an RMS force of 1 kJ/mol/nm at the start (``MD_FORCE_RMS``) plus a
  harmonic restraint (5,000 kJ/mol/nm^2) to the starting coordinates: barely trained models are no stable
  potentials, and the network is still evaluated in full at every step:
  diffmd ``langevin_middle`` through ``diffmd.md.make_chunk`` (one jitted
  ``lax.scan``, table updated every step, rebuilt when an atom moved half the
  skin); jax-md ``simulate.nvt_langevin`` (BAOAB) in a jitted ``lax.scan`` with
  ``neighbor.update`` every step, its usual loop.

Ratios (diffmd over jax-md; higher is faster) are medians of per-round ratios.
The models are barely trained, so the MD only measures speed; its mean
temperature is reported to show that it did not blow up. The cost of a gradient
through a trajectory as a multiple of the forward run is ``grad-memory``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import _harness as h

ENGINES = ("diffmd-schnet", "jaxmd-gnn", "diffmd-painn", "jaxmd-nequip")
# (diffmd engine, jax-md engine it is compared with)
PAIRS = (("diffmd-schnet", "jaxmd-gnn"), ("diffmd-painn", "jaxmd-nequip"))
TEMPERATURE, FRICTION, DT = 300.0, 1.0, 0.0005
LEARNING_RATE, ENERGY_WEIGHT, FORCE_WEIGHT = 1e-3, 1.0, 0.01
SKIN = 0.1
# MD potential: the model scaled to an RMS force of MD_FORCE_RMS [kJ/mol/nm] at the start, plus a harmonic
# restraint to the starting coordinates [kJ/mol/nm^2]. Barely trained models are not stable potentials
# (they heat to 10^3-10^10 K within a few hundred steps, and a molecule that flies apart changes the
# neighbor work); the network is still evaluated in full at every step.
MD_FORCE_RMS, RESTRAINT_K = 1.0, 5000.0
KB = 0.008314462618  # kJ/mol/K


# -- data --------------------------------------------------------------------
def make_dataset(path, frames: int, noise: float, seed: int = 0) -> dict:
    """Write perturbed alanine-dipeptide frames labelled by the Amber model to ``path`` (.npz).

    Args:
        path: output file.
        frames: number of frames F.
        noise: standard deviation of the Gaussian displacement of each coordinate [nm].
        seed: NumPy seed.

    Returns:
        ``{"frames", "atoms", "energy_mean", "energy_std"}`` (energies in kJ/mol).
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    import diffmd
    import diffmd.data
    from diffmd.learn.datasets import label_frames

    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    x0 = np.asarray(system.positions, np.float64)
    rng = np.random.default_rng(seed)
    positions = x0[None] + noise * rng.standard_normal((frames,) + x0.shape)
    params, energy_fn = system.energy_fn()
    energies, forces = label_frames(energy_fn, params, positions)
    np.savez(path, positions=positions, energies=energies, forces=forces, elements=np.asarray(system.topology.elements),
             masses=np.asarray(system.masses, np.float64), x0=x0)
    return {"frames": frames, "atoms": int(x0.shape[0]), "energy_mean": float(np.mean(energies)),
            "energy_std": float(np.std(energies))}


def make_engine(spec: dict):
    """Build the engine a worker serves (called in the worker process)."""
    return {"diffmd-schnet": DiffmdEngine, "diffmd-painn": DiffmdEngine, "jaxmd-gnn": JaxMDGNN,
            "jaxmd-nequip": JaxMDNequIP}[spec["name"]](spec)


class _Engine:
    """Shared driver: data on the device, a jitted train step and a jitted MD block; ``run`` does either."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.kind = "train"

    def setup(self) -> dict:
        import time

        import jax
        import jax.numpy as jnp

        data = np.load(self.spec["data"])
        self.masses = np.asarray(data["masses"], np.float32)
        self.x0 = np.asarray(data["x0"], np.float32)
        elements = np.asarray(data["elements"])
        self.species = np.searchsorted(np.unique(elements), elements).astype(np.int32)
        b = int(self.spec["batch"])
        n_batches = max(1, len(data["energies"]) // b)
        take = n_batches * b
        shape = (n_batches, b)
        self.batches = (jnp.asarray(data["positions"][:take].reshape(shape + self.x0.shape), jnp.float32),
                        jnp.asarray(data["energies"][:take].reshape(shape), jnp.float32),
                        jnp.asarray(data["forces"][:take].reshape(shape + self.x0.shape), jnp.float32))
        self.step_index = 0
        self.build()
        start = time.perf_counter()
        # a few steps: some models' first updates change their parameters' weak types, which recompiles
        self.run(3)
        train_compile = time.perf_counter() - start
        n_params = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(self.params))
        return {"parameters": n_params, "train_compile_s": train_compile, "device": str(jax.devices()[0])}

    def use(self, kind: str) -> dict:
        """Switch the timed unit to ``"train"`` or ``"md"`` (the MD starts from the current params)."""
        import time

        self.kind = kind
        out = {}
        if kind == "md":
            start = time.perf_counter()
            self.start_md()
            self.run(2)
            out["md_compile_s"] = time.perf_counter() - start
        return out

    def run(self, n: int) -> None:
        import jax

        if self.kind == "train":
            nb = self.batches[0].shape[0]
            loss = None
            for _ in range(n):
                k = self.step_index % nb
                self.params, self.opt_state, loss = self.train_step(
                    self.params, self.opt_state, self.batches[0][k], self.batches[1][k], self.batches[2][k])
                self.step_index += 1
            self.last_loss = float(loss)  # also waits for the steps
        else:
            for _ in range(n):
                self.md_state, self.md_temps = self.md_block(self.md_state)
            jax.block_until_ready(self.md_temps)

    def temperature(self, blocks: int) -> dict:
        """Mean temperature [K] over ``blocks`` more MD blocks, and the last training loss."""
        temps = []
        for _ in range(blocks):
            self.run(1)
            temps.append(np.asarray(self.md_temps, np.float64))
        t = np.concatenate(temps)
        return {"mean_k": float(np.mean(t)), "finite": bool(np.all(np.isfinite(t))), "steps": int(t.size),
                "last_loss": getattr(self, "last_loss", None), **self.md_extra()}

    def md_extra(self) -> dict:
        return {}


def _md_energy(model_energy, x0, *args):
    """``energy(x, *args) = scale * model_energy(x, *args) + restraint(x)`` [kJ/mol].

    ``scale`` makes the model's RMS force at ``x0`` (with ``args``) ``MD_FORCE_RMS``: small next to the
    restraint's thermal forces (about 110 kJ/mol/nm), as the models' forces grow steeply away from ``x0``.
    """
    import jax
    import jax.numpy as jnp

    ref = jnp.asarray(x0)
    rms = float(jnp.sqrt(jnp.mean(jax.grad(model_energy)(ref, *args) ** 2)))
    scale = MD_FORCE_RMS / rms if np.isfinite(rms) and rms > 0 else 1.0

    def energy(x, *args):
        return scale * model_energy(x, *args) + 0.5 * RESTRAINT_K * jnp.sum((x - ref) ** 2)

    return energy


def _loss_from_frames(frame_fn, n_atoms: int):
    """``loss(params, x, e, f)`` of batches from a per-frame ``(params, x) -> (E, F)``."""
    import jax
    import jax.numpy as jnp

    batched = jax.vmap(frame_fn, in_axes=(None, 0))

    def loss(params, x, e_ref, f_ref):
        e, f = batched(params, x)
        return (ENERGY_WEIGHT * jnp.mean(((e - e_ref) / n_atoms) ** 2)
                + FORCE_WEIGHT * jnp.mean(jnp.sum((f - f_ref) ** 2, axis=-1)))

    return loss


def _adam_step(loss):
    import jax
    import optax

    opt = optax.adam(LEARNING_RATE)

    @jax.jit
    def step(params, state, x, e, f):
        value, grads = jax.value_and_grad(loss)(params, x, e, f)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    return opt, step


class DiffmdEngine(_Engine):
    """diffmd SchNet or PaiNN: ``diffmd.train.make_loss`` + Adam; MD via ``make_chunk`` (LangevinMiddle)."""

    def build(self) -> None:
        import jax

        from diffmd import datasets as ds
        from diffmd.learn.train import make_loss
        from diffmd.potentials.neural import painn, schnet

        s = self.spec
        factory = schnet if s["name"] == "diffmd-schnet" else painn
        self.params, self.energy_fn = factory(self.species, cutoff=s["cutoff"], features=s["features"],
                                              interactions=s["interactions"], precision="single", skin=SKIN,
                                              key=jax.random.PRNGKey(0))
        frames = np.asarray(self.batches[0]).reshape((-1,) + self.x0.shape)
        template = ds.table_for_frames(self.energy_fn.neighbor_list, frames, None)
        loss = make_loss(self.energy_fn, template, len(self.x0), ENERGY_WEIGHT, FORCE_WEIGHT)
        opt, self.train_step = _adam_step(lambda p, x, e, f: loss(p, x, e, f, None))
        self.opt_state = opt.init(self.params)

    def start_md(self) -> None:
        import jax
        import jax.numpy as jnp

        from diffmd.md import Carry, make_chunk
        from diffmd.md import langevin_middle, make_force_fn, maxwell_boltzmann

        key = jax.random.PRNGKey(1)
        masses = jnp.asarray(self.masses)
        x = jnp.asarray(self.x0)
        nb = self.energy_fn.neighbor_list(self.x0, None)
        integrator = langevin_middle()
        v = maxwell_boltzmann(key, masses, TEMPERATURE)
        model = self.energy_fn
        md_energy = _md_energy(lambda x, p, box, nbrs: model(p, x, box, nbrs), self.x0, self.params, None, nb)

        def energy_fn(p, x, box=None, nbrs=None):
            return md_energy(x, p, box, nbrs)

        state = integrator.init(x, v, masses, make_force_fn(energy_fn, self.params, None, nb), dt=DT,
                                temperature=TEMPERATURE, friction=FRICTION, key=key)
        chunk = make_chunk(integrator, energy_fn, int(self.spec["block"]))
        n_dof = 3 * len(self.x0) - 3
        params = self.params

        @jax.jit
        def block(carry):
            carry, obs = chunk(carry, params)
            return carry, 2.0 * obs["kinetic_energy"] / (n_dof * KB)

        self.md_state = Carry(state=state, neighbors=nb)
        self.md_block = block

    def md_extra(self) -> dict:
        return {"neighbor_overflow": bool(self.md_state.neighbors.overflow)}


class _JaxMDEngine(_Engine):
    """Shared jax-md pieces: free space, one-hot species, ``simulate.nvt_langevin`` MD."""

    def build(self) -> None:
        import jax
        import jax.numpy as jnp
        from jax_md import space

        self.displacement, self.shift = space.free()
        self.onehot = jax.nn.one_hot(jnp.asarray(self.species), int(self.species.max()) + 1)
        self.make_model()
        nbr0 = self.neighbor_fn.allocate(jnp.asarray(self.x0))
        self.nbr0 = nbr0
        energy = self.energy  # energy(params, R, neighbor)

        def frame(params, x):
            nbr = nbr0.update(x)  # every frame's own table, as diffmd's loss rebuilds per frame
            e, g = jax.value_and_grad(energy, argnums=1)(params, x, nbr)
            return e, -g

        opt, self.train_step = _adam_step(_loss_from_frames(frame, len(self.x0)))
        self.opt_state = opt.init(self.params)

    def start_md(self) -> None:
        import jax
        import jax.numpy as jnp
        from jax_md import quantity, simulate

        params, energy = self.params, self.energy
        md_energy = _md_energy(lambda R, nbr: energy(params, R, nbr), self.x0,
                               self.neighbor_fn.allocate(jnp.asarray(self.x0)))

        def energy_fn(R, neighbor=None, **kwargs):
            return md_energy(R, neighbor)

        init_fn, apply_fn = simulate.nvt_langevin(energy_fn, self.shift, DT, KB * TEMPERATURE, gamma=FRICTION)
        x = jnp.asarray(self.x0)
        nbr = self.neighbor_fn.allocate(x)
        state = init_fn(jax.random.PRNGKey(1), x, mass=jnp.asarray(self.masses)[:, None], neighbor=nbr)
        n_steps = int(self.spec["block"])
        n_dof = 3 * len(self.x0) - 3

        def body(carry, _):
            st, nb = carry
            st = apply_fn(st, neighbor=nb)
            nb = nb.update(st.position)
            ke = quantity.kinetic_energy(momentum=st.momentum, mass=st.mass)
            return (st, nb), 2.0 * ke / (n_dof * KB)

        @jax.jit
        def block(carry):
            return jax.lax.scan(body, carry, None, length=n_steps)

        self.md_state = (state, nbr)
        self.md_block = block

    def md_extra(self) -> dict:
        return {"neighbor_overflow": bool(self.md_state[1].did_buffer_overflow)}


class JaxMDGNN(_JaxMDEngine):
    """jax-md ``graph_network_neighbor_list`` (flax NNX ``EnergyGraphNet``, dense neighbor format)."""

    def make_model(self) -> None:
        import jax
        from flax import nnx
        from jax_md import energy, partition

        s = self.spec
        width = int(s["features"])
        self.neighbor_fn, fn = energy.graph_network_neighbor_list(
            self.displacement, 10.0, s["cutoff"], SKIN, key=jax.random.PRNGKey(0), nodes=self.onehot,
            n_recurrences=int(s["interactions"]), mlp_sizes=(width, width), format=partition.Dense,
            disable_cell_list=True)
        graphdef, self.params = nnx.split(fn.model)

        def energy_of(params, R, neighbor):
            return nnx.merge(graphdef, params)(R, neighbor)

        self.energy = energy_of


class JaxMDNequIP(_JaxMDEngine):
    """jax-md ``nequip_neighbor_list`` (e3nn-jax NequIP, sparse neighbor format)."""

    def make_model(self) -> None:
        import jax
        import jax.numpy as jnp
        from jax_md import energy
        from jax_md._nn import nequip

        s = self.spec
        cfg = nequip.default_config()
        cfg.r_max = float(s["cutoff"])
        cfg.n_elements = int(self.onehot.shape[1])
        cfg.graph_net_steps = int(s["interactions"])
        cfg.hidden_irreps = f"{int(s['features'])}x0e + {int(s['features'])}x1e"
        cfg.shift, cfg.scale = 0.0, 1.0  # no data-set statistics (diffmd's models start at 0 and 1 too)
        cfg.n_neighbors = float(len(self.x0) - 1)
        self.neighbor_fn, init_fn, fn = energy.nequip_neighbor_list(
            self.displacement, 10.0, cfg, atoms=self.onehot, disable_cell_list=True, dr_threshold=SKIN)
        x0 = jnp.asarray(self.x0)
        self.params = init_fn(jax.random.PRNGKey(0), x0, self.neighbor_fn.allocate(x0))
        self.energy = fn


# -- parent side -------------------------------------------------------------
def engine_spec(name: str, args, data: str) -> dict:
    return {"name": name, "data": data, "batch": args.batch, "features": args.features,
            "interactions": args.interactions, "cutoff": args.cutoff, "block": args.block}


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def measure(engines: list, args, data: str, log) -> dict:
    """Set up every engine, then time training steps and MD blocks, each phase interleaved."""
    out = {}
    workers = {name: h.Worker("training", engine_spec(name, args, data), timeout=args.timeout) for name in engines}
    try:
        live = {}
        for name, w in workers.items():
            try:
                out[name] = {"setup": w.call("setup")}
                live[name] = w
                log(f"  {name}: {out[name]['setup']['parameters']:,} parameters, train step compiled in "
                    f"{out[name]['setup']['train_compile_s']:.1f} s")
            except (h.NotAvailable, h.WorkerError) as exc:
                out[name] = {"status": "error", "reason": str(exc).splitlines()[0]}
                w.close()
                log(f"  {name}: failed: {exc}")
        if not live:
            return out
        timing = h.interleaved(live, args.repeats, args.round_seconds)
        for name in live:
            out[name]["train"] = timing[name]
            out[name]["train_steps_per_s"] = 1.0 / statistics.median(timing[name]["seconds"])
        log("  training timed")
        for name, w in list(live.items()):
            try:
                out[name]["md_setup"] = w.call("use", kind="md")
            except (h.NotAvailable, h.WorkerError) as exc:
                out[name]["md_error"] = str(exc).splitlines()[0]
                live.pop(name)
                log(f"  {name}: MD failed: {exc}")
        timing = h.interleaved(live, args.repeats, args.round_seconds)
        for name, w in live.items():
            out[name]["md"] = timing[name]
            out[name]["md_steps_per_s"] = args.block / statistics.median(timing[name]["seconds"])
            out[name]["md_check"] = w.call("temperature", blocks=2)
            out[name]["memory"] = w.memory()
        log("  MD timed")
    finally:
        for w in workers.values():
            w.close()
    return out


def results_table(record: dict) -> str:
    res = record["engines"]
    rows = []
    for base, peer in PAIRS:
        for name in (base, peer):
            r = res.get(name)
            if r is None:
                continue
            if "train_steps_per_s" not in r:
                rows.append([name, "error: " + r.get("reason", "?")] + [""] * 8)
                continue
            ratio_t = ratio_m = ""
            other = res.get(peer)
            if name == base and other and "train" in other:
                ratio_t = f"{h.paired_ratio(other['train']['seconds'], r['train']['seconds']):.2f}"
                if "md" in r and "md" in other:
                    ratio_m = f"{h.paired_ratio(other['md']['seconds'], r['md']['seconds']):.2f}"
            md = _fmt(r["md_steps_per_s"]) if "md_steps_per_s" in r else r.get("md_error", "n/a")
            check = r.get("md_check", {})
            temp = f"{check['mean_k']:.0f}" if check.get("finite") else ("not finite" if check else "")
            rows.append([name, f"{r['setup']['parameters']:,}", _fmt(r["train_steps_per_s"]), ratio_t, md, ratio_m,
                         f"{r['setup']['train_compile_s']:.1f}", f"{r.get('md_setup', {}).get('md_compile_s', 0):.1f}",
                         temp, f"{r.get('memory', {}).get('peak_mib', 0):.0f}"])
    headers = ["engine", "parameters", "train steps/s", "train x jax-md peer", "MD steps/s", "MD x jax-md peer",
               "train compile s", "MD compile s", "MD mean T (K)", "peak RSS MiB"]
    return h.markdown_table(headers, rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffmd bench training", description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated from {', '.join(ENGINES)}")
    p.add_argument("--frames", type=int, default=None, help="labelled frames (default 64; 8 with --quick)")
    p.add_argument("--noise", type=float, default=0.005, help="coordinate noise of the frames [nm] (default 0.005)")
    p.add_argument("--batch", type=int, default=None, help="frames per training step (default 16; 4 with --quick)")
    p.add_argument("--features", type=int, default=None, help="feature width (default 64; 8 with --quick)")
    p.add_argument("--interactions", type=int, default=None, help="message-passing blocks (default 3; 1 with --quick)")
    p.add_argument("--cutoff", type=float, default=0.5, help="model cutoff [nm] (default 0.5)")
    p.add_argument("--block", type=int, default=None, help="MD steps per timed unit (default 100; 5 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds per phase (default 5; 1 with --quick)")
    p.add_argument("--round-seconds", type=float, default=None,
                   help="seconds per engine and round (default 2; 0.1 with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny smoke test; not recorded unless --results")
    h.add_output_arguments(p)
    return p


def resolve_args(argv=None):
    """Parsed and checked arguments, with the defaults of a full or ``--quick`` run filled in."""
    from diffmd import InputError

    args = build_parser().parse_args(argv)
    q = args.quick
    defaults = {"frames": 8 if q else 64, "batch": 4 if q else 16, "features": 8 if q else 64,
                "interactions": 1 if q else 3, "block": 5 if q else 100, "repeats": 1 if q else 5,
                "round_seconds": 0.1 if q else 2.0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.engines = [e for e in args.engines.split(",") if e]
    for e in args.engines:
        if e not in ENGINES:
            raise InputError(f"unknown engine {e!r}: choose from {', '.join(ENGINES)}")
    for key in ("frames", "batch", "features", "interactions", "block", "repeats"):
        if getattr(args, key) < 1:
            raise InputError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.batch > args.frames:
        raise InputError(f"--batch ({args.batch}) must not exceed --frames ({args.frames})")
    if not (args.cutoff > 0 and args.noise >= 0 and args.round_seconds > 0):
        raise InputError("--cutoff and --round-seconds must be positive and --noise >= 0")
    return args


def main(argv=None) -> int:
    args = resolve_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    env = h.environment()
    with tempfile.TemporaryDirectory(prefix="diffmd-bench-training-") as tmp:
        data = os.path.join(tmp, "frames.npz")
        info = make_dataset(data, args.frames, args.noise)
        log(f"[training] {info['frames']} alanine-dipeptide frames labelled by Amber")
        record = {"benchmark": "training", "environment": env, "data": info, "engines": measure(args.engines, args,
                                                                                                    data, log)}
    env["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    env["source_end"] = h.source_fingerprint()
    settings = (f"Alanine dipeptide (22 atoms, vacuum), {args.frames} frames (bundled coordinates + "
                f"{args.noise} nm Gaussian noise) labelled by Amber; float32 models, cutoff {args.cutoff} nm, "
                f"width {args.features}, {args.interactions} interaction blocks; training = one jitted Adam step "
                f"on {args.batch} frames (energy + 0.01 force loss, neighbor tables rebuilt per frame); MD = "
                f"blocks of {args.block} Langevin steps (300 K, 1/ps, 0.5 fs, no constraints) with the model "
                f"after training as the potential, scaled to {MD_FORCE_RMS:g} kJ/mol/nm RMS force at the start, "
                f"plus a {RESTRAINT_K:g} kJ/mol/nm^2 restraint to the start (the network evaluated in full every "
                "step; barely trained models blow up otherwise) (diffmd: langevin_middle via make_chunk; jax-md: "
                f"simulate.nvt_langevin + neighbor update every step, in lax.scan). {args.repeats} interleaved rounds "
                f"of ~{args.round_seconds} s per engine and phase; 'x jax-md peer' = median per-round ratio "
                "(diffmd SchNet vs jax-md GraphNetwork, diffmd PaiNN vs jax-md NequIP; > 1: diffmd faster). "
                "The peers are not the same architectures (see benchmarks/README.md).")
    body = results_table(record)
    print("\n".join(h.environment_lines(env)) + "\n\n" + settings + "\n\n" + body)
    if not args.no_record and (args.results or not args.quick):
        path = args.results or h.RESULTS
        command = "diffmd bench training " + " ".join(shlex.quote(a) for a in (argv or []))
        h.append_results(path, "Neural potentials: training and MD steps/s" + (" (quick)" if args.quick else ""),
                         env, settings + "\n\n" + body, command=command.strip())
        log(f"appended to {path}")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=float))
    return 0
