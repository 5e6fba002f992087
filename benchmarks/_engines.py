"""Engines for the ``energy`` benchmark; each one lives in its own worker process.

Every engine has ``setup() -> info``, ``check(path) -> {"energy"}`` (energy in
kJ/mol, forces (N, 3) in kJ/mol/nm written to ``path`` as float64 .npy) and
``run(n)`` (``n`` energy+forces evaluations, each finished before the next, as
in MD). diffmd engines also have ``rebuild(repeats)``: the neighbor-table
rebuild under jit.

Settings follow ``System.energy_fn``'s OpenMM createSystem defaults: no
cutoff, or a reaction-field cutoff (dielectric 78.3), periodic when the
coordinate file has a box (its box wins over the prmtop's), with the
dispersion correction for periodic cutoffs.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from ._harness import NotAvailable

KCAL = 4.184  # kJ per kcal
ANGSTROM = 0.1  # nm per Angstrom


def make_engine(spec: dict):
    """Build the engine a worker serves (called in the worker process)."""
    family = spec["family"]
    if family == "diffmd":
        return DiffmdEngine(spec)
    if family == "openmm":
        return OpenMMEngine(spec)
    if family == "jaxmd":
        return JaxmdEngine(spec)
    raise ValueError(f"unknown engine family {family!r}")


def _set_x64(enabled: bool) -> None:
    # Each engine owns its process, so it may choose the JAX-wide float64 switch:
    # on for double/mixed policies, off for single (as a user running float32 would).
    import jax

    jax.config.update("jax_enable_x64", enabled)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _openmm_method(app, nonbonded: str, periodic: bool):
    if nonbonded == "nocutoff":
        return app.NoCutoff
    if nonbonded == "cutoff":
        return app.CutoffPeriodic if periodic else app.CutoffNonPeriodic
    if nonbonded == "pme" and periodic:
        return app.PME
    raise ValueError(f"unsupported nonbonded method {nonbonded!r} in the energy benchmark")


def _openmm_system(spec: dict):
    """(openmm.System, topology, positions Quantity, box vectors or None) for the spec's settings."""
    from openmm import app, unit

    inpcrd = app.AmberInpcrdFile(spec["coords"])
    box = inpcrd.boxVectors
    prmtop = app.AmberPrmtopFile(spec["prmtop"], periodicBoxVectors=box)
    kwargs = {"nonbondedMethod": _openmm_method(app, spec["nonbonded"], box is not None),
              "constraints": None, "rigidWater": False}
    if spec["nonbonded"] != "nocutoff":
        kwargs["nonbondedCutoff"] = spec["cutoff"] * unit.nanometer
    if spec.get("implicit"):
        kwargs["implicitSolvent"] = {"obc2": app.OBC2}[spec["implicit"]]
    return prmtop.createSystem(**kwargs), prmtop.topology, inpcrd.getPositions(), box


class DiffmdEngine:
    """diffmd: ``jax.jit(jax.value_and_grad(energy_fn, argnums=1))`` on a fixed neighbor table."""

    def __init__(self, spec: dict):
        self.spec = spec
        _set_x64(spec["precision"] != "single")

    def setup(self) -> dict:
        import jax

        import diffmd

        spec = self.spec
        start = time.perf_counter()
        system = diffmd.load_amber(spec["prmtop"], spec["coords"])
        load_s = time.perf_counter() - start
        try:
            self.params, self.energy_fn = system.energy_fn(nonbonded=spec["nonbonded"], cutoff=spec["cutoff"],
                                                           implicit_solvent=spec.get("implicit"),
                                                           precision=spec["precision"])
        except diffmd.UnsupportedError as exc:
            raise NotAvailable(f"diffmd: {exc}") from exc
        dtype = np.float32 if spec["precision"] == "single" else np.float64
        self.box = None if spec["nonbonded"] == "nocutoff" or system.box is None else jax.numpy.asarray(
            system.box, dtype)
        self.positions = jax.numpy.asarray(system.positions, dtype)
        start = time.perf_counter()
        self.neighbors = jax.block_until_ready(self.energy_fn.neighbor_list(self.positions, self.box))
        neighbor_s = time.perf_counter() - start
        self.fn = jax.jit(jax.value_and_grad(self.energy_fn, argnums=1))
        start = time.perf_counter()
        jax.block_until_ready(self.fn(self.params, self.positions, self.box, self.neighbors))
        compile_s = time.perf_counter() - start
        return {"n_atoms": system.n_atoms, "load_s": load_s, "neighbor_build_s": neighbor_s,
                "compile_s": compile_s, "neighbor_capacity": int(self.neighbors.capacity),
                "device": str(self.positions.devices().pop())}

    def _evaluate(self):
        energy, grad = self.fn(self.params, self.positions, self.box, self.neighbors)
        grad.block_until_ready()
        return energy, grad

    def run(self, n: int) -> None:
        for _ in range(n):
            self._evaluate()

    def check(self, path: str) -> dict:
        energy, grad = self._evaluate()
        np.save(path, -np.asarray(grad, np.float64))
        return {"energy": float(energy), "overflow": bool(self.neighbors.overflow)}

    def rebuild(self, repeats: int) -> dict:
        """Seconds for ``jax.jit(diffmd.update_neighbors)`` when every atom moved past half the skin."""
        import jax

        import diffmd

        nbrs = self.neighbors
        if nbrs.dense or not nbrs.skin > 0:
            raise NotAvailable("the all-pairs table (no cutoff) is never rebuilt")
        # Shift every atom by 0.6 skin: more than the half-skin trigger, so each
        # call rebuilds (the table passed in stays the one built at the start).
        shifted = self.positions + jax.numpy.asarray([0.6 * nbrs.skin, 0.0, 0.0], self.positions.dtype)
        update = jax.jit(diffmd.update_neighbors)
        start = time.perf_counter()
        new = jax.block_until_ready(update(nbrs, shifted, self.box))
        compile_s = time.perf_counter() - start
        if not np.array_equal(np.asarray(new.reference_positions), np.asarray(shifted)):
            raise RuntimeError("update_neighbors did not rebuild: the timing would measure a no-op")
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(update(nbrs, shifted, self.box))
            times.append(time.perf_counter() - start)
        return {"compile_s": compile_s, "seconds": times, "seconds_median": statistics.median(times),
                "overflow": bool(new.overflow)}


class OpenMMEngine:
    """OpenMM: ``Context.getState(getEnergy=True, getForces=True)`` (recomputed at each call)."""

    def __init__(self, spec: dict):
        self.spec = spec

    def setup(self) -> dict:
        import openmm

        spec = self.spec
        try:
            platform = openmm.Platform.getPlatformByName(spec["platform"])
        except Exception as exc:  # OpenMMException: the platform was not built or has no driver
            raise NotAvailable(f"OpenMM has no {spec['platform']} platform here ({exc})") from exc
        start = time.perf_counter()
        system, _, positions, _ = _openmm_system(spec)
        load_s = time.perf_counter() - start
        properties = {}
        if spec["platform"] == "CPU":
            properties["Threads"] = str(_cores())
        elif "Precision" in platform.getPropertyNames():
            properties["Precision"] = spec["precision"]
        start = time.perf_counter()
        try:
            self.context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform, properties)
            self.context.setPositions(positions)
            self.context.getState(getEnergy=True, getForces=True)
        except Exception as exc:
            if spec["platform"] in ("CUDA", "OpenCL", "HIP"):
                raise NotAvailable(f"OpenMM {spec['platform']} context failed: {exc}") from exc
            raise
        context_s = time.perf_counter() - start
        return {"n_atoms": system.getNumParticles(), "load_s": load_s, "context_s": context_s,
                "properties": {k: platform.getPropertyValue(self.context, k) for k in platform.getPropertyNames()}}

    def run(self, n: int) -> None:
        for _ in range(n):
            self.context.getState(getEnergy=True, getForces=True)

    def check(self, path: str) -> dict:
        from openmm import unit

        state = self.context.getState(getEnergy=True, getForces=True)
        forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        np.save(path, np.asarray(forces, np.float64))
        return {"energy": state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)}


class JaxmdEngine:
    """jax-md 0.2.x ``jax_md.mm_forcefields.amber``, loaded through its OpenMM converter.

    jax-md works in Angstrom and kcal/mol; energies and forces are converted to
    kJ/mol and kJ/mol/nm for the check. Its precision follows JAX's float64
    switch (its ``precision`` option is not implemented), so ``single`` runs
    with x64 off and float32 arrays.
    """

    def __init__(self, spec: dict):
        self.spec = spec
        _set_x64(spec["precision"] == "double")

    def setup(self) -> dict:
        import jax

        try:
            from jax_md.mm_forcefields import amber
            from jax_md.mm_forcefields.io import openmm as jio
            from jax_md.mm_forcefields.nonbonded.electrostatics import CutoffCoulomb
        except ImportError as exc:
            raise NotAvailable(f"jax_md.mm_forcefields is not importable ({exc})") from exc

        spec = self.spec
        start = time.perf_counter()
        system, topology, positions, box = _openmm_system(spec)
        try:
            converted = jio.convert_openmm_system(system, topology, positions, box, precision=spec["precision"])
        except NotImplementedError as exc:
            raise NotAvailable(f"jax-md cannot load this setting: {exc}") from exc
        load_s = time.perf_counter() - start
        if spec.get("implicit"):
            raise NotAvailable("jax-md's AMBER module has no generalized-Born implicit solvent")
        if spec["nonbonded"] == "pme":
            from jax_md.mm_forcefields.nonbonded.electrostatics import PMECoulomb

            # OpenMM's alpha; jax-md takes one grid size for all axes: the largest of OpenMM's
            coulomb = PMECoulomb(grid_size=int(np.max(np.asarray(converted.recip_grid))),
                                 alpha=float(converted.recip_alpha), r_cut=converted.nb_options.r_cut)
        else:
            # With the cutoff left to nb_options (None here: no cutoff), CutoffCoulomb
            # is jax-md's plain 1/r Coulomb; it has no reaction field.
            coulomb = CutoffCoulomb(r_cut=converted.nb_options.r_cut or 0.0)
        try:
            energy_fn, neighbor_fn, _, _ = amber.energy(converted.params, converted.topology, converted.box_vectors,
                                                       coulomb_options=coulomb, nb_options=converted.nb_options)
        except NotImplementedError as exc:
            raise NotAvailable(f"jax-md cannot build this energy: {exc}") from exc
        self.positions = converted.positions
        start = time.perf_counter()
        try:
            self.neighbors = jax.block_until_ready(neighbor_fn.allocate(self.positions))
            self.fn = jax.jit(jax.value_and_grad(lambda x, nbrs: energy_fn(x, nbrs)["etotal"]))
            jax.eval_shape(self.fn, self.positions, self.neighbors)
        except (IndexError, ValueError) as exc:
            if spec["nonbonded"] != "pme":
                raise
            # jax-md 0.2.29's PMECoulomb indexes the box as three lengths while its amber
            # builder passes 3x3 vectors; given lengths it builds an N x N pair array instead
            raise NotAvailable(f"jax-md's PME does not run on this system ({type(exc).__name__}: {exc})") from exc
        neighbor_s = time.perf_counter() - start
        self.fn = jax.jit(jax.value_and_grad(lambda x, nbrs: energy_fn(x, nbrs)["etotal"]))
        start = time.perf_counter()
        jax.block_until_ready(self.fn(self.positions, self.neighbors))
        compile_s = time.perf_counter() - start
        return {"n_atoms": int(system.getNumParticles()), "load_s": load_s, "neighbor_build_s": neighbor_s,
                "compile_s": compile_s, "neighbor_format": str(converted.nb_options.nb_format),
                "dtype": str(self.positions.dtype)}

    def _evaluate(self):
        energy, grad = self.fn(self.positions, self.neighbors)
        grad.block_until_ready()
        return energy, grad

    def run(self, n: int) -> None:
        for _ in range(n):
            self._evaluate()

    def check(self, path: str) -> dict:
        energy, grad = self._evaluate()
        np.save(path, -np.asarray(grad, np.float64) * KCAL / ANGSTROM)
        return {"energy": float(energy) * KCAL}
