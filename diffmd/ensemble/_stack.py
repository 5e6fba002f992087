"""Ensembles: many simulations stepped as one batched, compiled program.

An ensemble has M members along a leading axis: R replicas of one system (own
seeds, temperatures, parameters) or replicas of several different systems,
padded to common shapes (``diffmd.ensemble``). One ``vmap``-ed integrator step
advances every member; the member axis is sharded over the available devices
(``jax.sharding``; one device is a mesh of one, the same code path).

    ens = diffmd.ensemble.prepare([t4l, cb7, ala], replicas=4, temperature=300.0)
    result = diffmd.ensemble.simulate(ens, steps=5000, out="runs")   # runs/member-000/ ...

Neighbor tables are kept in lockstep: when any member needs a rebuild, every
member's table is rebuilt at once (a fresh table is valid for every member) and
the forces recomputed, which keeps the batched step free of per-member branches
(a ``lax.cond`` under ``vmap`` runs both branches for everyone). A member whose
table overflows is re-allocated on the host and the whole chunk replayed for
all members from its start, so no member loses or redoes a step wrongly.

The batched step is the single run's step (``diffmd.md.member_step``) vmapped over the
member axis, so NPT ensembles (``prepare(..., pressure=1.0)``) come with it: every member
has its own Monte Carlo barostat (box, acceptance counts, adapted step size, key), and the
volume moves of all members fall on the same steps.

Batches of *different* systems (padded, see ``diffmd.ensemble``) work with every
nonbonded method; with a cutoff their tables use the layout that tests every
cluster pair (exact for any box, so members with different boxes share one
rebuild), and PME members share the finest PME grid any of them needs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import _padding
from ..kernels.constants import BOLTZMANN
from ..kernels.errors import InputError, UnsupportedError
from ..md import MEMBER_AXIS, Carry, barostat_key, make_force_fn, maxwell_boltzmann, member_step, resolve_physics
from ..md import prepare as prepare_one


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of an ensemble: which system, which replica, with what settings.

    Attributes:
        system_index: position of its system in the list given to ``prepare``.
        replica: replica number within its system (0 .. R-1).
        n_atoms: real atoms (the rest of the member's rows are padding).
        temperature: thermostat and initial-velocity temperature [K].
        seed: seed of its initial velocities and noise.
        n_dof: degrees of freedom of its temperature.
    """

    system_index: int
    replica: int
    n_atoms: int
    temperature: float
    seed: int
    n_dof: int


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """A batched set of simulations ready to run (build it with ``prepare``).

    Attributes:
        integrator: the shared ``Integrator``.
        energy_fn: the shared energy function; with ``terms`` it is re-targeted per member.
        params: per-member parameters, stacked on a leading member axis.
        terms: per-member ``AmberTerms`` (stacked) for batches of different systems, else None.
        carry: the stacked ``Carry`` (integrator states and neighbor tables; under NPT the
            barostats, whose boxes are the current ones, and their keys).
        box: (M, 3, 3) starting boxes [nm] or None (``current_box`` follows a barostat).
        constraints: ``Constraints`` (stacked when ``constraints_batched``) or None.
        constraints_batched: whether ``constraints`` has a member axis.
        n_real: (M,) int32 real atoms per member when padded (padding is kept out of
            rebuilt neighbor tables), else None.
        members: one ``Member`` per row.
        systems: the systems, in the order given.
        dt: time step [ps].
        settings: the options it was prepared with.
    """

    integrator: Any
    energy_fn: Any
    params: Any
    terms: Any
    carry: Carry
    box: Any
    constraints: Any
    constraints_batched: bool
    n_real: Any
    members: tuple
    systems: tuple
    dt: float
    settings: dict

    @property
    def size(self) -> int:
        """Number of members M."""
        return len(self.members)

    @property
    def n_dof(self) -> np.ndarray:
        """(M,) degrees of freedom."""
        return np.array([m.n_dof for m in self.members])

    @property
    def current_box(self):
        """(M, 3, 3) boxes [nm] now: the barostats' under NPT, else ``box`` (None without a box)."""
        return self.carry.current_box(self.box)

    def energy(self, positions=None):
        """(M,) potential energies [kJ/mol] of every member at ``positions`` (default: current)."""
        positions = self.carry.state.positions if positions is None else positions
        return batched_energy(self.energy_fn, self.params, self.terms, positions, self.current_box,
                              self.carry.neighbors)


def buckets(systems, max_padding: float = 0.25) -> list[list[int]]:
    """Group systems by size so that padding stays small: one ensemble per group.

    Greedy from the largest: a group takes every system with at least
    ``(1 - max_padding)`` times the atoms of its largest member.

    Args:
        systems: ``diffmd.System`` objects (or anything with ``n_atoms``).
        max_padding: largest fraction of a member's rows that may be padding.

    Returns:
        Lists of indices into ``systems`` (each in the given order), largest group sizes first.
    """
    if not 0.0 <= max_padding < 1.0:
        raise InputError(f"max_padding must be in [0, 1), got {max_padding!r}")
    order = sorted(range(len(systems)), key=lambda i: -systems[i].n_atoms)
    groups: list[list[int]] = []
    for i in order:
        if groups and systems[i].n_atoms >= (1.0 - max_padding) * systems[groups[-1][0]].n_atoms:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [sorted(g) for g in groups]


def _per_member(value, n_members: int, n_replicas: int, name: str):
    """A scalar, a per-replica list (length R) or a per-member list (length M) -> list of M."""
    if value is None or np.ndim(value) == 0:
        return [value] * n_members
    value = list(value)
    if len(value) == n_members:
        return value
    if len(value) == n_replicas:
        return value * (n_members // n_replicas)
    raise InputError(f"{name} has {len(value)} entries: give one value, one per replica ({n_replicas}) or one per "
                     f"member ({n_members})")


def _static_config(fn):
    """The settings an energy function must share with the rest of a batch."""
    if not dataclasses.is_dataclass(fn):
        return id(fn)
    skip = {"terms_", "exclusion_table_", "_dense"}
    return tuple((f.name, repr(getattr(fn, f.name))) for f in dataclasses.fields(fn) if f.name not in skip)


def prepare(systems, *, replicas: int = 1, temperature=300.0, seed: int = 0, seeds: Sequence[int] | None = None,
            params: Sequence | None = None, integrator: str = "langevin", dt: float = 0.002, friction: float = 1.0,
            constraints: str | None = None, rigid_water: bool | None = None, hydrogen_mass: float | None = None,
            nonbonded: str | None = None, cutoff: float | None = None, implicit_solvent: str | None = None,
            precision: str = "mixed", minimize: bool = False, minimize_max_iterations: int = 0,
            potential=None, pressure=None, barostat_frequency: int = 25) -> Ensemble:
    """Build an ensemble: every system in ``systems`` times ``replicas``, as one batch.

    Members are ordered by system, the replicas of one system consecutive.

    Args:
        systems: a ``diffmd.System`` or a list of them (with positions).
        replicas: replicas per system (R).
        temperature: [K], one value, one per replica (R) or one per member (M).
        seed: base seed; member m uses ``seed + m`` unless ``seeds`` is given.
        seeds: one seed per member.
        params: one parameter set per member (same structure as the system's), e.g.
            for Hamiltonian replica exchange; default each system's own.
        integrator, dt, friction, constraints, rigid_water, hydrogen_mass, nonbonded, cutoff,
            implicit_solvent, precision, minimize, minimize_max_iterations: as
            ``diffmd.simulate`` (shared by all members; each system is minimized once):
            ``implicit_solvent`` None, ``'obc2'``, ``'obc1'`` or ``'hct'``; ``precision``
            ``'mixed'`` (default) or ``'double'`` (both need ``jax_enable_x64``) or ``'single'``.
        potential: None (each system's Amber force field) or a ``(params, energy_fn)``
            pair, as ``diffmd.simulate``'s, for replicas of one system (e.g. a trained
            neural potential); ``params=`` then gives per-member parameter sets of it.
        pressure: None (constant volume) or the pressure [bar] of a Monte Carlo barostat on
            every member (NPT, as ``diffmd.simulate(pressure=...)``; replicas of one periodic
            system): one value, one per replica (R) or one per member (M). Each member has its
            own box, acceptance statistics and step size, its barostat at its own temperature,
            and the moves of member m are those of ``diffmd.simulate`` with seed ``seeds[m]``.
        barostat_frequency: steps between volume moves (with ``pressure``).

    Returns:
        ``Ensemble``.

    Raises:
        InputError: bad counts or options. UnsupportedError: systems whose energy settings
        cannot share one program.
    """
    systems = (systems,) if not isinstance(systems, (list, tuple)) else tuple(systems)
    if not systems:
        raise InputError("prepare needs at least one system")
    try:
        whole = int(replicas) == replicas and replicas >= 1
    except (TypeError, ValueError):
        whole = False
    if not whole:
        raise InputError(f"replicas must be a positive integer (copies of each system; 1 for one copy each), got "
                         f"{replicas!r}: pass e.g. replicas=4")
    replicas = int(replicas)
    n_members = len(systems) * replicas
    temps = [float(t) for t in _per_member(temperature, n_members, replicas, "temperature")]
    if any(not (t > 0 and np.isfinite(t)) for t in temps):
        raise InputError(f"temperatures must be positive [K], got {temps}")
    seeds = [seed + m for m in range(n_members)] if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n_members:
        raise InputError(f"seeds has {len(seeds)} entries for {n_members} members")
    if params is not None and len(params) != n_members:
        raise InputError(f"params has {len(params)} entries for {n_members} members")
    heterogeneous = len(systems) > 1
    if heterogeneous and any(getattr(s.physics, "virtual_sites", None) is not None for s in systems):
        raise UnsupportedError("systems with virtual sites (from OpenMM) run as replicas of one system: their sites "
                               "are placed by each system's own energy function; prepare one ensemble per system")
    pressures = None
    if pressure is not None:
        pressures = _per_member(pressure, n_members, replicas, "pressure")
        if any(isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not np.isfinite(p)
               for p in pressures):
            raise InputError(f"pressure must be a finite number in bar (e.g. 1.0), or one per replica, got {pressure!r}")
        pressures = [float(p) for p in pressures]
    if pressure is not None and heterogeneous:
        raise UnsupportedError("pressure= runs replicas of one system: a barostat moves a member's molecules and "
                               "rebuilds its tables, which padding to a common shape does not allow for; prepare "
                               "one NPT ensemble per system")
    if potential is not None and heterogeneous:
        raise UnsupportedError("potential= runs replicas of one system: a potential is built for one atom count and "
                               "its padding is the force field's; prepare one ensemble per system")

    # settings that must be shared are checked before anything expensive runs
    energy_kw = dict(nonbonded=nonbonded, cutoff=cutoff, implicit_solvent=implicit_solvent, precision=precision)
    run = resolve_physics(systems[0], constraints=constraints, rigid_water=rigid_water, hydrogen_mass=hydrogen_mass,
                          nonbonded=nonbonded, cutoff=cutoff, implicit_solvent=implicit_solvent, potential=potential)
    pme_grid = None
    if run["nonbonded"] == "pme" and heterogeneous:
        # one compiled program needs one PME grid: the finest each dimension of any member asks for,
        # so every member is at least as accurate as OpenMM's own choice for its box
        grids = np.array([s.energy_fn(**energy_kw)[1].pme_grid for s in systems])
        pme_grid = tuple(int(g) for g in grids.max(axis=0))
    if heterogeneous and len({_static_config(s.energy_fn(**energy_kw, pme_grid=pme_grid)[1]) for s in systems}) > 1:
        raise UnsupportedError("these systems cannot share one compiled program: their energy settings differ; "
                               "run them as separate ensembles")
    preps = [prepare_one(s, integrator=integrator, dt=dt, temperature=temps[i * replicas], friction=friction,
                         constraints=constraints, rigid_water=rigid_water, hydrogen_mass=hydrogen_mass,
                         nonbonded=nonbonded, cutoff=cutoff, implicit_solvent=implicit_solvent, precision=precision,
                         seed=seeds[i * replicas], minimize=minimize, minimize_max_iterations=minimize_max_iterations,
                         pme_grid=pme_grid, potential=potential,
                         pressure=None if pressures is None else pressures[i * replicas],
                         barostat_frequency=barostat_frequency)
             for i, s in enumerate(systems)]

    members, states, tables, member_params, barostats = [], [], [], [], []
    n_total = _padding.padded_size([s.n_atoms for s in systems]) if heterogeneous else systems[0].n_atoms
    for i, (system, prep) in enumerate(zip(systems, preps)):
        rows = range(i * replicas, (i + 1) * replicas)
        velocities = _replica_velocities(prep, system, [temps[m] for m in rows], [seeds[m] for m in rows])
        for r, m in enumerate(rows):
            members.append(Member(i, r, system.n_atoms, temps[m], seeds[m], int(prep.n_dof)))
            states.append(_replica_state(prep.carry.state, velocities[r], temps[m], seeds[m]))
            tables.append(prep.carry.neighbors)
            member_params.append(prep.params if params is None else params[m])
            if pressures is not None:  # the barostat's temperature is the member's thermostat's
                baro = prep.carry.barostat
                barostats.append(dataclasses.replace(baro, temperature=jnp.asarray(temps[m], baro.temperature.dtype),
                                                     pressure=jnp.asarray(pressures[m], baro.pressure.dtype)))

    terms = None
    constraints_batched = heterogeneous
    cons = preps[0].constraints
    if heterogeneous:
        states, tables, member_params, terms, cons = _pad_members(systems, preps, members, states, tables,
                                                                  member_params, n_total)
    box = None if preps[0].box is None else jnp.stack([jnp.asarray(preps[m.system_index].box) for m in members])
    carry = Carry(_padding.stack(states), None if tables[0] is None else _padding.stack(tables))
    if barostats:
        carry = dataclasses.replace(carry, barostat=_padding.stack(barostats),
                                    barostat_key=jnp.stack([barostat_key(seeds[m]) for m in range(n_members)]))
    params_b = _padding.stack([jax.tree_util.tree_map(jnp.asarray, p) for p in member_params])
    settings = dict(integrator=integrator, dt_ps=dt, friction_per_ps=friction, constraints=run["constraints"],
                    rigid_water=run["rigid_water"], hydrogen_mass=hydrogen_mass, nonbonded=run["nonbonded"],
                    cutoff_nm=run["cutoff"], implicit_solvent=run["implicit_solvent"], precision=precision,
                    replicas=replicas)
    if potential is not None:
        settings["potential"] = type(potential[1]).__name__
    if pressure is not None:
        settings.update(pressure_bar=pressures[0] if np.ndim(pressure) == 0 else pressures,
                        barostat_frequency=int(barostat_frequency))
    n_real = jnp.asarray([m.n_atoms for m in members], jnp.int32) if heterogeneous else None
    if params is not None:
        # each system was prepared with one parameter set: every member starts with the forces and
        # energy of its own (the first step's kick uses them)
        st = carry.state
        e, f = jax.jit(batched_forces, static_argnums=0)(preps[0].energy_fn, params_b, terms, st.positions, box,
                                                          carry.neighbors)
        carry = dataclasses.replace(carry, state=dataclasses.replace(
            st, forces=f.astype(st.forces.dtype), potential_energy=e.astype(st.potential_energy.dtype)))
    return Ensemble(preps[0].integrator, preps[0].energy_fn, params_b, terms, carry, box, cons,
                    constraints_batched, n_real, tuple(members), systems, float(dt), settings)


def _replica_velocities(prep, system, temps, seeds):
    """(R, N, 3) initial velocities of R replicas of one system [nm/ps], one compiled draw for all.

    Replica r draws from ``split(PRNGKey(seeds[r]))[1]`` as ``diffmd.md.prepare`` does, so a
    member starts exactly as ``diffmd.simulate`` with its seed would; given velocities
    are every replica's start.
    """
    st = prep.carry.state
    if system.velocities is not None:
        return jnp.broadcast_to(st.velocities, (len(seeds),) + st.velocities.shape)
    vkeys = jnp.stack([jax.random.split(jax.random.PRNGKey(int(s)))[1] for s in seeds])
    draw = jax.jit(jax.vmap(lambda k, t: maxwell_boltzmann(
        k, st.masses, t, positions=st.positions, constraints=prep.constraints, remove_com=True, box=prep.box)))
    return draw(vkeys, jnp.asarray(temps, st.positions.dtype))


def _replica_state(state, velocities, temperature, seed):
    """A replica's integrator state: the prepared state with its own velocities, noise key and kT."""
    key = jax.random.split(jax.random.PRNGKey(int(seed)))[0]
    changes = {"velocities": velocities.astype(state.velocities.dtype), "key": key}
    if hasattr(state, "kT"):
        changes["kT"] = jnp.asarray(BOLTZMANN * temperature, state.kT.dtype)
    return dataclasses.replace(state, **changes)


def _pad_members(systems, preps, members, states, tables, member_params, n_total):
    """Pad every member of a heterogeneous batch to common shapes (see ``diffmd.ensemble``)."""
    sizes = _padding.amber_padding_sizes([(p, s.terms) for p, s in
                                          zip(member_params, [systems[m.system_index] for m in members])])
    width = max(int(t.idx.shape[1]) for t in tables)
    excl_width = max(int(t.exclusions.shape[1]) for t in tables)
    padded_states, padded_tables, padded_params, padded_terms = [], [], [], []
    for m, st, table, p in zip(members, states, tables, member_params):
        system = systems[m.system_index]
        positions = _padding.padding_positions(np.asarray(st.positions), n_total)
        padded_states.append(dataclasses.replace(
            st, positions=jnp.asarray(positions, st.positions.dtype),
            velocities=jnp.asarray(_padding.pad_per_atom(st.velocities, n_total), st.velocities.dtype),
            forces=jnp.asarray(_padding.pad_per_atom(st.forces, n_total), st.forces.dtype),
            masses=jnp.asarray(_padding.pad_per_atom(st.masses, n_total), st.masses.dtype)))
        padded_tables.append(_padding.pad_neighbors(table, m.n_atoms, n_total, width, excl_width, positions))
        pp, pt = _padding.pad_amber(p, system.terms, n_total, sizes["n_types"], sizes["n_grids"], sizes["counts"])
        dtype = jax.tree_util.tree_leaves(p)[0].dtype
        padded_params.append(jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), pp))
        padded_terms.append(jax.tree_util.tree_map(jnp.asarray, pt))
    cons = None
    if any(p.constraints is not None for p in preps):
        template = next(p.constraints for p in preps if p.constraints is not None)
        sets = [p.constraints if p.constraints is not None else _empty_constraints(template) for p in preps]
        n_water = max(int(c.water.shape[0]) for c in sets)
        n_pairs = max(int(c.pairs.shape[0]) for c in sets)
        cons = _padding.stack([_padding.pad_constraints(sets[m.system_index], n_water, n_pairs,
                                                        (m.n_atoms, m.n_atoms + 1)) for m in members])
    return padded_states, padded_tables, padded_params, _padding.stack(padded_terms), cons


def _empty_constraints(template):
    return dataclasses.replace(
        template, water=jnp.zeros((0, 3), jnp.int32), water_distances=jnp.zeros((0, 2), template.lengths.dtype),
        water_mask=jnp.zeros((0,), bool), pairs=jnp.zeros((0, 2), jnp.int32),
        lengths=jnp.zeros((0,), template.lengths.dtype), pair_mask=jnp.zeros((0,), bool))


# ----------------------------------------------------------------------------- batched physics


def member_energy_fn(energy_fn, terms):
    """The energy function of one member: ``energy_fn`` with that member's topology, if batched."""
    if terms is None:
        return energy_fn
    return dataclasses.replace(energy_fn, terms_=terms)


def _axes(tree):
    return None if tree is None else 0


def batched_energy(energy_fn, params, terms, positions, box, neighbors):
    """(M,) potential energies [kJ/mol] of stacked members (pure; jit/vmap/grad go through)."""
    def one(p, t, x, b, nb):
        return member_energy_fn(energy_fn, t)(p, x, b, nb)

    return jax.vmap(one, in_axes=(0, _axes(terms), 0, _axes(box), _axes(neighbors)))(
        params, terms, positions, box, neighbors)


def batched_forces(energy_fn, params, terms, positions, box, neighbors):
    """((M,) energies [kJ/mol], (M, N, 3) forces [kJ/mol/nm]) of stacked members."""
    def one(p, t, x, b, nb):
        return make_force_fn(member_energy_fn(energy_fn, t), p, b, nb)(x)

    return jax.vmap(one, in_axes=(0, _axes(terms), 0, _axes(box), _axes(neighbors)))(
        params, terms, positions, box, neighbors)


def make_ensemble_chunk(integrator, energy_fn, n_steps: int, *, constraints_batched: bool = False) -> Callable:
    """The pure function advancing a stacked ``Carry`` by ``n_steps`` steps for every member.

    Each step is ``diffmd.md.member_step`` (the step of a single run: integrator,
    constraints, force refresh, barostat), ``vmap``-ed over the member axis in lockstep:
    when any member's table needs a rebuild every member's is rebuilt (padding kept out of
    the tables) and, under NPT, the barostat moves of all members happen on the same
    steps, each member with its own box, acceptance statistics and key.

    Returns:
        ``chunk(carry, params, terms, box, constraints, n_real) -> (carry, observables)`` with
        ``observables['potential_energy']`` and ``['kinetic_energy']`` of shape
        (n_steps, M) [kJ/mol] (and ``['volume']`` (n_steps, M) [nm^3] under NPT).
        ``carry.neighbors.overflow`` (M,) flags members whose table was too small (with a
        summed potential's tuple of tables, each table's flag); the chunk must then be
        replayed after re-allocation.
    """
    n_steps = int(n_steps)
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    cons_axis = 0 if constraints_batched else None

    def one(c: Carry, p, t, b, cons, n_real):
        mask = None if n_real is None else functools.partial(_padding.mask_padding, n_real=n_real)
        return member_step(integrator, member_energy_fn(energy_fn, t), c, p, b, cons, lockstep=MEMBER_AXIS,
                           mask_table=mask)

    def chunk(carry: Carry, params, terms=None, box=None, constraints=None, n_real=None):
        step = jax.vmap(one, in_axes=(0, 0, _axes(terms), _axes(box), None if constraints is None else cons_axis,
                                      _axes(n_real)), axis_name=MEMBER_AXIS)

        def body(c: Carry, _):
            return step(c, params, terms, box, constraints, n_real)

        return jax.lax.scan(body, carry, None, length=n_steps)

    return chunk
