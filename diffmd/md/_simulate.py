"""``simulate``: molecular dynamics of a ``System`` with files, progress and checkpoints.

    import jax; jax.config.update("jax_enable_x64", True)   # for precision='mixed'/'double'
    import diffmd
    system = diffmd.load_amber(*diffmd.data.alanine_dipeptide())
    result = diffmd.simulate(system, 5000, out="run1")       # 10 ps of Langevin at 300 K
    print(result.ns_per_day, result.temperature.mean())

The run is ``jax.lax.scan`` over chunks of steps under ``jit`` (see ``diffmd.md``);
between chunks the host writes ``out/state.csv``, ``out/trajectory.dcd`` (with
``out/topology.pdb``), optionally ``out/trajectory.xyz`` (energies and forces, for ML data
sets) and ``out/checkpoint/``. ``steps`` is the run's total: ``simulate(..., resume=True)``
continues from that checkpoint up to it, bit for bit as if the run had not stopped (on the same
machine and settings), so re-running a killed script with ``resume=True`` finishes the job.
``simulate(..., pressure=1.0)`` adds a Monte Carlo barostat (NPT) to a periodic system.

``simulate(system, steps, potential=(params, energy_fn))`` runs the same dynamics with any
potential of the classical signature instead of the system's force field (a trained neural
potential, or a sum such as Amber plus a neural correction): the system then supplies only
the topology, masses, constraints, starting positions and box. :func:`run_dynamics` (arrays
in, no files) and :func:`make_chunk` (the pure stepping function) are the lower levels.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._failures import (DEFAULT_MAX_TEMPERATURE_FACTOR, RunFacts, check_max_temperature_factor,
                        reference_temperature, start_facts, temperatures)
from ._runner import Carry, SimulationResult, make_chunk, run_dynamics  # noqa: F401
from ._tables import neighbor_metadata, neighbor_template
from ._barostat import barostat_init, molecule_index
from ._integrators import kinetic_energy, langevin_middle, maxwell_boltzmann, nose_hoover_chain, velocity_verlet
from ..kernels.constraint_setup import (build_constraints, constraints_from_pairs, count_degrees_of_freedom,
                                       repartition_hydrogen_mass)
from ..kernels.errors import InputError
from ..kernels.precision import resolve_precision
from ..kernels.virtual_sites import place, site_parent_pairs
from ..io import (CheckpointReporter, DCDReporter, ExtXYZReporter, ProgressReporter, Reporter, RunInfo,
                        StateDataReporter)
from ._integrators import make_force_fn
from ._minimize import minimize as _minimize
from ..io import find_checkpoint
from ..io import read_checkpoint_metadata, restore_checkpoint
from ..io import write_pdb

INTEGRATORS = ("langevin", "verlet", "nose-hoover")
NONBONDED = ("nocutoff", "cutoff", "pme")
#: Stream of the barostat's PRNG key, folded into the seed's key (apart from the integrator's).
_BAROSTAT_STREAM = 0x4E5054


def barostat_key(seed: int):
    """The PRNG key of the barostat moves of a run with ``seed`` (its stream apart from the integrator's)."""
    return jax.random.fold_in(jax.random.PRNGKey(int(seed)), _BAROSTAT_STREAM)


def make_integrator(name: str):
    """The ``Integrator`` for ``'langevin'`` (LangevinMiddle), ``'verlet'`` or ``'nose-hoover'``,
    and whether it removes centre-of-mass motion."""
    if name == "langevin":
        return langevin_middle(), True
    if name == "verlet":
        return velocity_verlet(), False
    if name == "nose-hoover":
        return nose_hoover_chain(), True
    raise InputError(f"unknown integrator {name!r}: choose one of {', '.join(INTEGRATORS)}")


def _init_state(integrator_name, integrator, positions, velocities, masses, force_fn, *, dt, temperature, friction,
                key, n_dof):
    if integrator_name == "langevin":
        return integrator.init(positions, velocities, masses, force_fn, dt=dt, temperature=temperature,
                               friction=friction, key=key)
    if integrator_name == "verlet":
        return integrator.init(positions, velocities, masses, force_fn, dt=dt, key=key)
    # OpenMM's NoseHooverIntegrator default collision frequency is 1/ps; `friction` plays that role
    return integrator.init(positions, velocities, masses, force_fn, dt=dt, temperature=temperature,
                           collision_frequency=friction, n_dof=n_dof, key=key)


def _validate(steps, dt, temperature, friction, report_every, chunk_size, integrator, nonbonded):
    if int(steps) != steps or steps < 0:
        raise InputError(f"steps must be a non-negative integer, got {steps!r}")
    if not (dt > 0 and np.isfinite(dt)):
        raise InputError(f"dt must be a positive time step in ps (e.g. 0.002), got {dt!r}")
    if dt > 0.01:
        raise InputError(f"dt={dt} ps is {dt * 1000:g} fs, far above a stable MD time step; dt is in ps "
                         "(0.002 for 2 fs)")
    if integrator != "verlet" and not (temperature > 0 and np.isfinite(temperature)):
        raise InputError(f"temperature must be positive [K], got {temperature!r}")
    if friction < 0 or not np.isfinite(friction):
        raise InputError(f"friction must be >= 0 [1/ps], got {friction!r}")
    if int(report_every) != report_every or report_every < 1:
        raise InputError(f"report_every must be a positive number of steps, got {report_every!r}")
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1 or report_every % chunk_size):
        raise InputError(f"chunk_size must divide report_every ({report_every}), got {chunk_size!r}")
    if integrator not in INTEGRATORS:
        raise InputError(f"unknown integrator {integrator!r}: choose one of {', '.join(INTEGRATORS)}")
    if nonbonded not in NONBONDED:
        raise InputError(f"unknown nonbonded method {nonbonded!r}: choose one of {', '.join(NONBONDED)}")


def resolve_physics(system, *, constraints=None, rigid_water=None, hydrogen_mass=None, nonbonded=None, cutoff=None,
                    implicit_solvent=None, potential=None) -> dict:
    """The run's physics settings: what was given, else the system's own.

    An Amber system takes OpenMM's createSystem defaults for what was not given (H-bond
    constraints, rigid water, no cutoff, 1.0 nm). A system from OpenMM (``system.physics``)
    brings its own constraints, masses, nonbonded method, cutoff and implicit solvent:
    ``constraints``, ``rigid_water`` and ``hydrogen_mass`` must then be left out, and a
    nonbonded setting that differs from the System's is an error.

    Returns:
        dict with ``constraints`` (``'openmm-system'`` for the System's own), ``rigid_water``,
        ``nonbonded``, ``cutoff`` and ``implicit_solvent``.

    Raises:
        InputError: an argument that contradicts the OpenMM System (named in the message).
    """
    physics = getattr(system, "physics", None)
    if physics is None:
        return dict(constraints="hbonds" if constraints is None else constraints,
                    rigid_water=True if rigid_water is None else bool(rigid_water),
                    nonbonded="nocutoff" if nonbonded is None else nonbonded,
                    cutoff=1.0 if cutoff is None else cutoff, implicit_solvent=implicit_solvent)
    where = system.source or "the OpenMM System"
    for name, value, what in (("constraints", constraints, "its own constraints (and rigid waters)"),
                              ("rigid_water", rigid_water, "its own constraints (and rigid waters)"),
                              ("hydrogen_mass", hydrogen_mass, "its own masses")):
        if value is not None:
            raise InputError(f"{name}={value!r} conflicts with the OpenMM System ({where}), which defines {what}: "
                             f"drop {name}, or build the System with the setting you want (createSystem's "
                             "constraints=, rigidWater=, hydrogenMass=)")
    if potential is not None:  # the potential replaces the System's energy: its nonbonded settings do not apply
        return dict(constraints="openmm-system", rigid_water=None, nonbonded=physics.nonbonded, cutoff=physics.cutoff,
                    implicit_solvent=None)
    s = physics.resolve(where, nonbonded=nonbonded, cutoff=cutoff, implicit_solvent=implicit_solvent)
    return dict(constraints="openmm-system", rigid_water=None, **s)


def _validate_pressure(system, pressure, barostat_frequency, integrator, nonbonded, implicit_solvent):
    """Host-side checks of the barostat options (``pressure`` None: no barostat)."""
    if pressure is None:
        return
    if isinstance(pressure, bool) or not isinstance(pressure, (int, float, np.integer, np.floating)) \
            or not np.isfinite(pressure):
        raise InputError(f"pressure must be a finite number in bar (e.g. 1.0), got {pressure!r}")
    if isinstance(barostat_frequency, bool) or int(barostat_frequency) != barostat_frequency \
            or barostat_frequency < 1:
        raise InputError(f"barostat_frequency must be a positive number of steps (OpenMM's default 25), "
                         f"got {barostat_frequency!r}")
    if nonbonded not in ("cutoff", "pme"):
        raise InputError(f"pressure={pressure} needs a periodic system with nonbonded='cutoff' or 'pme', not "
                         f"{nonbonded!r}: a barostat changes the periodic box (choose nonbonded='pme' or 'cutoff', "
                         "or drop pressure for constant volume)")
    if system.box is None:
        raise InputError(f"pressure={pressure}: {system.source or 'the system'} has no periodic box (the "
                         "coordinates file holds no box line); solvate it in a box, or drop pressure")
    if implicit_solvent is not None:
        raise InputError(f"pressure={pressure} cannot be combined with implicit_solvent={implicit_solvent!r}: "
                         "implicit solvent has no volume to control; drop one of them")
    if integrator == "verlet":
        raise InputError(f"pressure={pressure} needs a thermostat, and 'verlet' (NVE) has no temperature: use "
                         "integrator='langevin' or 'nose-hoover' for NPT")


def _check_potential(system, potential, nonbonded, implicit_solvent):
    """Host-side checks of a user ``potential=(params, energy_fn)`` (None: the system's force field)."""
    if potential is None:
        return
    if not (isinstance(potential, (tuple, list)) and len(potential) == 2 and callable(potential[1])):
        raise InputError("potential must be a (params, energy_fn) pair, e.g. potential=diffmd.train.load_model("
                         "folder, system.topology.elements) or potential=sum_potentials(...)")
    if not hasattr(potential[1], "neighbor_list"):
        raise InputError(f"the potential's energy function ({type(potential[1]).__name__}) has no "
                         "neighbor_list(positions, box) method; diffmd's potentials all do")
    if nonbonded not in (None, "nocutoff") or implicit_solvent is not None:
        raise InputError("nonbonded, cutoff and implicit_solvent choose the system's Amber force field and have no "
                         "effect with potential=: build them into the potential (system.energy_fn(nonbonded=..., "
                         "cutoff=..., implicit_solvent=...)) and pass that, or drop potential=")
    physics = getattr(system, "physics", None)
    if physics is not None and physics.virtual_sites is not None and getattr(potential[1], "virtual_sites_", None) \
            is None:
        raise InputError(f"{system.source or 'the system'} has virtual sites, which a potential= must place from "
                         "their parents itself (diffmd.kernels.virtual_sites.place) so that their forces reach real "
                         "atoms; use the system's own energy_fn(), or a system without virtual sites")
    n_model = getattr(potential[1], "n_atoms", None)
    if n_model is not None and int(n_model) != system.n_atoms:
        raise InputError(f"the potential is built for {n_model} atoms but {system.source or 'the system'} has "
                         f"{system.n_atoms}: build (or load) it for this system's elements")


class Prepared(NamedTuple):
    """A system set up for dynamics (see :func:`prepare`)."""

    integrator: Any
    energy_fn: Any
    params: Any
    carry: Carry
    box: Any
    constraints: Any
    n_dof: int
    masses: np.ndarray


def prepare(system, *, integrator: str = "langevin", dt: float = 0.002, temperature: float = 300.0,
            friction: float = 1.0, constraints: str | None = None, rigid_water: bool | None = None,
            hydrogen_mass: float | None = None, nonbonded: str | None = None, cutoff: float | None = None,
            implicit_solvent: str | None = None, precision: str = "mixed", seed: int = 0,
            minimize: bool = False, minimize_max_iterations: int = 0, pressure: float | None = None,
            barostat_frequency: int = 25, pme_grid=None, potential=None) -> Prepared:
    """Everything ``simulate`` builds before the first step (arguments as there; ``pme_grid``
    overrides OpenMM's choice of PME grid, e.g. to share one grid across an ensemble).

    Returns:
        ``Prepared(integrator, energy_fn, params, carry, box, constraints, n_dof, masses)``:
        ``run_dynamics(integrator, energy_fn, params, carry, steps, box=box,
        constraints=constraints, n_dof=n_dof, dt_ps=dt, chunk_size=...)`` runs it. With
        ``pressure``, ``carry.barostat`` holds the barostat (its box is the current one;
        ``box`` is the starting box).
    """
    _check_potential(system, potential, nonbonded, implicit_solvent)
    run = resolve_physics(system, constraints=constraints, rigid_water=rigid_water, hydrogen_mass=hydrogen_mass,
                          nonbonded=nonbonded, cutoff=cutoff, implicit_solvent=implicit_solvent, potential=potential)
    nonbonded, cutoff, implicit_solvent = run["nonbonded"], run["cutoff"], run["implicit_solvent"]
    periodic = nonbonded != "nocutoff" or potential is not None
    # a user potential's box is the system's: the barostat's nonbonded check is the potential's business
    _validate_pressure(system, pressure, barostat_frequency, integrator,
                       "cutoff" if potential is not None else nonbonded, implicit_solvent)
    prec = resolve_precision(precision)
    dtype = prec.accumulate
    top = system.topology
    if potential is None:
        params, energy_fn = system.energy_fn(nonbonded=nonbonded, cutoff=cutoff, implicit_solvent=implicit_solvent,
                                             precision=precision, pme_grid=pme_grid)
    else:
        params, energy_fn = potential
    box = None if not periodic or system.box is None else jnp.asarray(system.box, dtype)

    masses = np.asarray(system.masses, np.float64)
    bonds = np.asarray(system.terms.bond_idx)
    if hydrogen_mass is not None:
        masses = repartition_hydrogen_mass(masses, bonds, top.elements, hydrogen_mass)
    physics = getattr(system, "physics", None)
    if physics is not None:  # an OpenMM System's own constraints and virtual sites
        cons = constraints_from_pairs(physics.constraint_pairs, physics.constraint_lengths, masses,
                                      virtual_sites=physics.virtual_sites, dtype=dtype)
    else:
        cons = build_constraints(bonds, np.asarray(system.params.bond_r0), masses, top.elements, run["constraints"],
                                 run["rigid_water"], angles=(np.asarray(system.terms.angle_idx),
                                                             np.asarray(system.params.angle_theta0)),
                                 residue_index=top.residue_index, residue_names=top.residue_names, dtype=dtype)
    empty = cons.n_constraints == 0 and cons.virtual_sites is None
    cons = None if empty else jax.tree_util.tree_map(jnp.asarray, cons)
    integ, remove_com = make_integrator(integrator)
    n_dof = count_degrees_of_freedom(int(np.sum(masses > 0)), 0 if cons is None else cons.n_constraints,
                                     remove_com)

    sites = None if cons is None else cons.virtual_sites
    positions = place(jnp.asarray(system.positions, dtype), sites)
    neighbors = energy_fn.neighbor_list(system.positions if sites is None else np.asarray(positions),
                                        None if box is None else np.asarray(box))
    if minimize:
        res = _minimize(energy_fn, params, positions, box, neighbors, constraints=cons, masses=masses,
                        max_iterations=minimize_max_iterations)
        positions = jnp.asarray(res.positions, dtype)
        neighbors = res.neighbors if getattr(res, "neighbors", None) is not None else \
            energy_fn.neighbor_list(np.asarray(positions), None if box is None else np.asarray(box))

    key, vkey = jax.random.split(jax.random.PRNGKey(int(seed)))
    jmasses = jnp.asarray(masses, dtype)
    if system.velocities is not None:
        velocities = jnp.asarray(system.velocities, dtype)
    else:
        velocities = maxwell_boltzmann(vkey, jmasses, temperature, positions=positions, constraints=cons,
                                       remove_com=True, box=box)

    state = _init_state(integrator, integ, positions, velocities, jmasses,
                        make_force_fn(energy_fn, params, box, neighbors), dt=dt, temperature=temperature,
                        friction=friction, key=key, n_dof=n_dof)
    carry = Carry(state, neighbors)
    if pressure is not None:
        # molecules are the bond graph's components; the barostat's temperature is the thermostat's.
        # An OpenMM System's constraints and virtual sites join atoms too (its constrained bonds
        # are not among its bonds; a 4-site water's M is bonded to nothing)
        links = [np.asarray(top.bonds).reshape(-1, 2)]
        if physics is not None:
            links += [np.asarray(physics.constraint_pairs).reshape(-1, 2), site_parent_pairs(physics.virtual_sites)]
        baro = barostat_init(box, molecule_index(system.n_atoms, np.concatenate(links)), pressure=float(pressure),
                             temperature=float(temperature), frequency=int(barostat_frequency), dtype=dtype)
        carry = Carry(state, neighbors, baro, barostat_key(seed))

    return Prepared(integ, energy_fn, params, carry, box, cons, n_dof, masses)


def simulate(system, steps: int, *, integrator: str = "langevin", dt: float = 0.002, temperature: float = 300.0,
             friction: float = 1.0, constraints: str | None = None, rigid_water: bool | None = None,
             hydrogen_mass: float | None = None, nonbonded: str | None = None, cutoff: float | None = None,
             implicit_solvent: str | None = None, precision: str = "mixed", report_every: int = 500,
             out=None, reporters: Sequence[Reporter] = (), xyz: bool = False, seed: int = 0,
             minimize: bool = False, minimize_max_iterations: int = 0, chunk_size: int | None = None,
             progress: bool | None = None, resume: bool = False, throw: bool = True, pressure: float | None = None,
             barostat_frequency: int = 25, potential=None,
             max_temperature_factor: float | None = DEFAULT_MAX_TEMPERATURE_FACTOR) -> SimulationResult:
    """Run molecular dynamics of an Amber ``System`` (its force field, or any ``potential``).

    Args:
        system: a ``diffmd.System`` with positions (``diffmd.load_amber``).
        steps: the run's total number of steps (its last step). With ``resume`` and a
            checkpoint at step S, the run takes the ``steps - S`` steps left (none when
            S >= ``steps``: the finished run is returned as it is, files untouched).
        integrator: ``'langevin'`` (OpenMM's LangevinMiddle, NVT), ``'verlet'``
            (velocity Verlet, NVE) or ``'nose-hoover'`` (Nose-Hoover chain, NVT).
        dt: time step [ps].
        temperature: thermostat temperature and that of initial Maxwell-Boltzmann
            velocities when the system has none [K].
        friction: Langevin collision rate, or the Nose-Hoover collision frequency [1/ps].
        constraints: ``'hbonds'`` (default), ``'none'`` or ``'allbonds'`` (as OpenMM's
            createSystem).
        rigid_water: waters rigid (SETTLE) whatever ``constraints`` says (default True).
        hydrogen_mass: hydrogen mass repartitioning [amu] (e.g. 1.5 with dt=0.004), or None.
        nonbonded: ``'nocutoff'`` (default), ``'cutoff'`` (reaction field, periodic if the
            system has a box) or ``'pme'``.
        cutoff: nonbonded cutoff [nm] (default 1.0).
        implicit_solvent: None, ``'obc2'`` (GB-OBC2, Amber igb=5), ``'obc1'`` (igb=2) or
            ``'hct'`` (igb=1), with the ACE surface term, as OpenMM's OBC2/OBC1/HCT.

            A system from OpenMM (``diffmd.from_openmm``, ``diffmd.load_openmm``) brings its
            own constraints, virtual sites, masses, nonbonded method, cutoff and implicit
            solvent: leave these six out (``constraints``, ``rigid_water`` and
            ``hydrogen_mass`` given are an error; a nonbonded setting that differs from the
            System's too). Its degrees of freedom are 3 N_massive - N_constraints - 3.
        precision: ``'mixed'`` (default: float32 forces, float64 positions and energies),
            ``'double'`` or ``'single'`` (float32 forces, positions and velocities; the
            result's host arrays are float64 copies for every precision). Mixed and double need ``jax_enable_x64``; without
            it this raises ``InputError`` before tracing (turn it on with
            ``jax.config.update("jax_enable_x64", True)`` or pass ``precision='single'``).
        report_every: steps between reports (rows of state.csv, frames, checkpoints); the
            run's last step is always reported too.
        out: output folder: ``state.csv`` (columns ``step,time_ps,potential_kjmol,
            kinetic_kjmol,total_kjmol,temperature_k`` [+ ``volume_nm3,density_gcm3`` if
            periodic] ``,ns_per_day``; first row the starting state), ``trajectory.dcd``,
            ``topology.pdb``, ``checkpoint/``; or None for no files.
        reporters: more reporters (intervals must be multiples of the chunk size).
        xyz: also write ``out/trajectory.xyz`` (extended XYZ with energies and forces).
        seed: seed of the initial velocities and the Langevin noise.
        minimize: energy-minimize before the dynamics (``diffmd.minimize``, to an RMS force
            of 10 kJ/mol/nm per atom, OpenMM's default); skipped when resuming.
        minimize_max_iterations: L-BFGS iteration cap of that minimization (0: until converged).
        chunk_size: steps per jitted chunk (default ``report_every``; must divide it).
        progress: progress bar with ns/day on stderr (None: only on a terminal).
        resume: continue from ``out/checkpoint/`` up to ``steps`` (files cut back to the
            checkpoint and appended to); without a checkpoint yet, start afresh. A run killed
            at any moment (SIGKILL included) and resumed gives the same files and state, bit
            for bit, as one never interrupted.
        throw: raise ``SimulationError`` when the run fails (NaN or Inf energies, a
            temperature above ``max_temperature_factor`` times the reference, an atom
            leaving the system, a constraint failure), naming the step and the likely cause;
            with False the run stops there and the result's ``error`` says why. Files and
            the checkpoint end at the last good report either way.
        pressure: None (constant volume) or the pressure [bar] of a Monte Carlo
            barostat (``diffmd.md``, OpenMM's MonteCarloBarostat: isotropic,
            molecular scaling, at the thermostat's temperature). Needs a periodic
            system with ``nonbonded='cutoff'`` or ``'pme'`` and a thermostat
            (``'langevin'`` or ``'nose-hoover'``). The box then changes: state.csv's
            ``volume_nm3`` and ``density_gcm3``, the DCD's unit cells and the result's
            ``volume`` follow it, and the barostat's state is checkpointed.
        barostat_frequency: steps between volume moves (a move after every step k with
            ``k % barostat_frequency == 0``).
        potential: None (the system's Amber force field, set up by ``nonbonded``,
            ``cutoff`` and ``implicit_solvent``) or a ``(params, energy_fn)`` pair with
            the classical signature ``energy_fn(params, positions [nm], box [nm],
            neighbors) -> kJ/mol`` and a ``neighbor_list(positions, box)`` method: a
            trained model (``diffmd.train.load_model``), a sum of potentials
            (``diffmd.potentials.neural.sum_potentials``), or the system's own force
            field with other parameters. The system then supplies topology, masses,
            constraints (from its bonds), positions and its box, if it has one (passed
            to the potential, which is then periodic). ``precision`` still sets the
            integrator's dtypes; the potential keeps its own.
        max_temperature_factor: the run fails at the first step whose kinetic temperature
            exceeds this multiple of the reference temperature (``temperature``, the
            thermostat's target; for ``'verlet'``, the larger of ``temperature`` and the
            starting temperature), even with finite energies. Default 5 (see
            ``diffmd.md.DEFAULT_MAX_TEMPERATURE_FACTOR``); None turns the check off.

    Returns:
        ``SimulationResult``: final positions [nm] and velocities [nm/ps], the reported
        steps with potential, kinetic, total energy [kJ/mol] and temperature [K], and
        ``ns_per_day`` (and ``volume`` [nm^3] per report for periodic systems).

    Raises:
        InputError: bad options (before anything runs).
        SimulationError: the run became unstable (message names the step); files end at
            the last good report and the checkpoint is the last good one.
    """
    run = resolve_physics(system, constraints=constraints, rigid_water=rigid_water, hydrogen_mass=hydrogen_mass,
                          nonbonded=nonbonded, cutoff=cutoff, implicit_solvent=implicit_solvent, potential=potential)
    _validate(steps, dt, temperature, friction, report_every, chunk_size, integrator, run["nonbonded"])
    factor = check_max_temperature_factor(max_temperature_factor)
    if system.positions is None:
        raise InputError(f"{system.source or 'system'} has no positions: load coordinates with it")
    if resume and out is None:
        raise InputError("resume=True needs out= (the folder holding checkpoint/)")
    resuming = False
    if resume:
        resuming = find_checkpoint(out) is not None
    prep = prepare(system, integrator=integrator, dt=dt, temperature=temperature, friction=friction,
                   constraints=constraints, rigid_water=rigid_water, hydrogen_mass=hydrogen_mass, nonbonded=nonbonded,
                   cutoff=cutoff, implicit_solvent=implicit_solvent, precision=precision, seed=seed,
                   minimize=minimize and not resuming, minimize_max_iterations=minimize_max_iterations,
                   pressure=pressure, barostat_frequency=barostat_frequency, potential=potential)
    integ, energy_fn, params, carry, box, cons, n_dof, masses = prep
    top = system.topology
    neighbors = carry.neighbors

    settings = {"integrator": integrator, "dt_ps": dt, "temperature_k": temperature, "friction_per_ps": friction,
                "constraints": run["constraints"], "rigid_water": run["rigid_water"], "hydrogen_mass": hydrogen_mass,
                "nonbonded": run["nonbonded"], "cutoff_nm": run["cutoff"], "implicit_solvent": run["implicit_solvent"],
                "precision": precision, "report_every": report_every, "seed": seed}
    if pressure is not None:
        # only NPT runs record these, so constant-volume checkpoints stay resumable as they were
        settings.update(pressure_bar=float(pressure), barostat_frequency=int(barostat_frequency))
    if potential is not None:  # likewise; a checkpoint of one potential is not resumed with another kind
        settings.update(potential=type(energy_fn).__name__)
    appending = False
    if resuming:
        meta = read_checkpoint_metadata(out)
        saved = meta.get("settings", {})
        differ = {k: (saved.get(k), settings.get(k)) for k in {**saved, **settings}
                  if k != "seed" and saved.get(k) != settings.get(k)}
        if differ:
            raise InputError(f"{out}: cannot resume with other settings than the checkpoint's: "
                             + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in differ.items()))
        template = dataclasses.replace(carry, neighbors=neighbor_template(neighbors, meta.get("neighbors")))
        carry, _ = restore_checkpoint(out, like=template)
        appending = True
        if int(carry.state.step) >= steps:  # finished: report the checkpoint, touch no file
            return run_dynamics(integ, energy_fn, params, carry, 0, box=box, constraints=cons, n_dof=n_dof,
                                dt_ps=float(dt), chunk_size=int(chunk_size or report_every))

    all_reporters = list(reporters)
    checkpointer = None
    if out is not None:
        os.makedirs(out, exist_ok=True)
        if not appending:
            write_pdb(os.path.join(out, "topology.pdb"), top, np.asarray(carry.state.positions, np.float64),
                      None if system.box is None else np.asarray(system.box))
        files = [StateDataReporter(os.path.join(out, "state.csv"), report_every, append=appending),
                 DCDReporter(os.path.join(out, "trajectory.dcd"), report_every, append=appending)]
        if xyz:
            files.append(ExtXYZReporter(os.path.join(out, "trajectory.xyz"), report_every, append=appending))
        checkpointer = CheckpointReporter(out, report_every, append=appending, extra_metadata={
            "settings": settings, "neighbors": neighbor_metadata(carry.neighbors)})
        all_reporters = files + all_reporters + [checkpointer]
    if progress is not False:
        all_reporters.insert(0, ProgressReporter(report_every, enabled=progress))
    chunk = int(chunk_size or report_every)
    for r in all_reporters:
        if r.interval % chunk:
            raise InputError(f"a reporter's interval ({r.interval}) is not a multiple of the chunk size ({chunk})")

    def on_reallocate(nbrs):
        if checkpointer is not None:
            checkpointer.extra["neighbors"] = neighbor_metadata(nbrs)

    start = int(carry.state.step)
    info = RunInfo(n_atoms=system.n_atoms, dt_ps=float(dt), start_step=start, total_steps=int(steps) - start,
                   topology=top, masses=masses, periodic=box is not None)
    st = carry.state
    start_temperature = float(temperatures(kinetic_energy(st.velocities, st.masses), n_dof))
    facts = dict(dt_ps=float(dt), constraints=run["constraints"], hydrogen_mass=hydrogen_mass, n_atoms=system.n_atoms)
    # the starting structure's forces say something only for a fresh start (a checkpoint is mid-run)
    facts = start_facts(st.forces, minimized=bool(minimize), **facts) if not appending else RunFacts(**facts)
    return run_dynamics(integ, energy_fn, params, carry, int(steps) - start, box=box, constraints=cons, n_dof=n_dof,
                        dt_ps=float(dt), chunk_size=chunk, reporters=all_reporters, run_info=info, throw=throw,
                        on_reallocate=on_reallocate, max_temperature_factor=factor,
                        reference_temperature=reference_temperature(integrator, temperature, start_temperature),
                        facts=facts)
