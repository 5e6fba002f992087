"""Integrators: pure ``init``/``step`` pairs over immutable state pytrees.

Each factory (``velocity_verlet``, ``langevin_middle``, ``nose_hoover_chain``)
takes only static options (changing them recompiles) and returns an
``Integrator(init, step)`` pair, in the spirit of optax's
``GradientTransformation``:

    integrator = langevin_middle()
    state = integrator.init(positions, velocities, masses, force_fn,
                            dt=0.002, temperature=300.0, friction=1.0, key=key)
    state = integrator.step(state, force_fn, constraints)

Physical numbers (dt [ps], kT [kJ/mol], friction [1/ps], masses [amu]) are
leaves of the state, never baked into closures, so they can be traced,
differentiated and vmapped (one temperature per replica, say).

Calling convention for forces: ``step`` takes ``force_fn(positions) -> (energy
[kJ/mol], forces (N, 3) [kJ/mol/nm])``, a closure the caller builds for the
step. The runner closes it over the current parameters, box and an up-to-date
neighbor table (``make_force_fn(energy_fn, params, box, neighbors)``), and
refreshes the table between steps; built inside a jitted scan or a
differentiated function the closure is just traced code, so gradients with
respect to ``params`` flow through it. Forces are evaluated once per step, at
the new positions, and carried in the state.

Constraints enter as a ``diffmd.kernels.constraints.Constraints`` pytree (or
None) passed to ``step``, and ``box`` for the minimum image of constrained bonds
when positions are wrapped. Every integrator applies them the way OpenMM's
reference implementation of the same scheme does (see each factory); a solver
that did not converge sets ``state.constraint_failed`` (sticky), which the
runner turns into an error on the host.

Padding: atoms with mass 0 (ensemble padding, virtual sites) have inverse mass
0; they never move, receive no noise and do not count in the centre of mass.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ..kernels.constants import BOLTZMANN
from ..kernels.constraints import Constraints, constrain_positions, constrain_velocities

ForceFn = Callable[[jax.Array], "tuple[jax.Array, jax.Array]"]


class Integrator(NamedTuple):
    """A pair of pure functions: ``init(...) -> state`` and ``step(state, force_fn, ...) -> state``."""

    init: Callable[..., Any]
    step: Callable[..., Any]


def make_force_fn(energy_fn, params, box, neighbors) -> ForceFn:
    """Close ``energy_fn(params, positions, box, neighbors)`` into ``positions -> (energy, forces)``.

    Forces are ``-grad`` of the energy [kJ/mol/nm].
    """

    def force_fn(positions):
        energy, grad = jax.value_and_grad(energy_fn, argnums=1)(params, positions, box, neighbors)
        return energy, -grad

    return force_fn


# ---------------------------------------------------------------------------------------------
# States
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.tree_util.register_dataclass)
@dataclasses.dataclass(frozen=True, kw_only=True)
class VerletState:
    """State of velocity Verlet (NVE).

    Attributes:
        positions: (N, 3) [nm].
        velocities: (N, 3) [nm/ps], at the same time as ``positions``.
        forces: (N, 3) at ``positions`` [kJ/mol/nm].
        potential_energy: scalar at ``positions`` [kJ/mol].
        masses: (N,) [amu]; 0 marks padding atoms.
        dt: time step [ps].
        step: int32 number of steps taken.
        key: PRNG key (unused by this integrator; kept for a uniform state).
        constraint_failed: bool, set once a constraint solve did not converge.
    """

    positions: jax.Array
    velocities: jax.Array
    forces: jax.Array
    potential_energy: jax.Array
    masses: jax.Array
    dt: jax.Array
    step: jax.Array
    key: jax.Array
    constraint_failed: jax.Array


@functools.partial(jax.tree_util.register_dataclass)
@dataclasses.dataclass(frozen=True, kw_only=True)
class LangevinState(VerletState):
    """State of the Langevin middle integrator (NVT).

    Velocities are those after the step's last update, which OpenMM also reports
    for this scheme (no half-step shift).

    Attributes (besides ``VerletState``'s):
        kT: thermal energy [kJ/mol].
        friction: collision rate [1/ps].
    """

    kT: jax.Array
    friction: jax.Array


@functools.partial(jax.tree_util.register_dataclass)
@dataclasses.dataclass(frozen=True, kw_only=True)
class NoseHooverState(VerletState):
    """State of the Nose-Hoover chain integrator (NVT).

    Attributes (besides ``VerletState``'s):
        kT: thermal energy [kJ/mol].
        collision_frequency: thermostat frequency [1/ps].
        n_dof: degrees of freedom the thermostat controls (float).
        chain_positions: (L,) thermostat positions (dimensionless).
        chain_velocities: (L,) thermostat velocities [1/ps].
    """

    kT: jax.Array
    collision_frequency: jax.Array
    n_dof: jax.Array
    chain_positions: jax.Array
    chain_velocities: jax.Array


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def inverse_masses(masses):
    """1/m, and 0 where m == 0 (padding atoms, virtual sites) [1/amu]."""
    massive = masses > 0
    return jnp.where(massive, 1.0 / jnp.where(massive, masses, 1.0), 0.0)


def kinetic_energy(velocities, masses):
    """Kinetic energy 1/2 sum m v^2 [kJ/mol] (padding atoms have m = 0)."""
    return 0.5 * jnp.sum(masses[:, None] * velocities * velocities)


def temperature(velocities, masses, n_dof):
    """Instantaneous temperature 2 KE / (n_dof kB) [K]."""
    return 2.0 * kinetic_energy(velocities, masses) / (n_dof * BOLTZMANN)


def remove_com_velocity(velocities, masses):
    """Subtract the centre-of-mass velocity from every atom with mass (OpenMM's CMMotionRemover)."""
    total = jnp.sum(masses)
    vcm = jnp.sum(masses[:, None] * velocities, axis=0) / jnp.where(total > 0, total, 1.0)
    return jnp.where((masses > 0)[:, None], velocities - vcm[None, :], velocities)


def maxwell_boltzmann(key, masses, temperature, *, positions=None, constraints=None,
                      remove_com=True, box=None):
    """Velocities drawn from the Maxwell-Boltzmann distribution at ``temperature`` [K].

    Each component is normal with variance kT/m; then the centre-of-mass
    velocity is removed and the velocity constraints applied (both are
    mass-weighted orthogonal projections, so the result is exactly
    Maxwell-Boltzmann on the remaining degrees of freedom, mean kinetic energy
    n_dof kT / 2). Padding atoms (mass 0) get zero velocity.

    Args:
        key: PRNG key.
        masses: (N,) [amu].
        temperature: [K] (may be traced).
        positions: (N, 3) [nm], needed with ``constraints``.
        constraints: a ``Constraints`` set or None.
        remove_com: remove centre-of-mass motion.
        box: (3, 3) box [nm] or None.

    Returns:
        (N, 3) velocities [nm/ps] in the dtype of ``positions`` (else of ``masses``).
    """
    masses = jnp.asarray(masses)
    dtype = positions.dtype if positions is not None else masses.dtype
    invm = inverse_masses(masses).astype(dtype)
    kT = BOLTZMANN * jnp.asarray(temperature, dtype)
    v = jnp.sqrt(kT * invm)[:, None] * jax.random.normal(key, (masses.shape[0], 3), dtype)
    if remove_com:
        v = remove_com_velocity(v, masses.astype(dtype))
    if constraints is not None:
        if positions is None:
            raise ValueError("maxwell_boltzmann: constraints need positions")
        v, _ = constrain_velocities(constraints, positions, v, invm, box)
    return v


def _base_fields(positions, velocities, masses, force_fn, dt, key):
    positions = jnp.asarray(positions)
    dtype = positions.dtype
    # one compiled evaluation: run eagerly, the first forces would dispatch hundreds of tiny programs
    energy, forces = jax.jit(force_fn)(positions)
    if key is None:
        key = jax.random.PRNGKey(0)
    return dict(
        positions=positions,
        velocities=jnp.asarray(velocities, dtype),
        forces=jnp.asarray(forces).astype(dtype),
        # at least the positions' precision, so energy models of lower precision keep one carry type
        potential_energy=jnp.asarray(energy, jnp.promote_types(jnp.asarray(energy).dtype, dtype)),
        masses=jnp.asarray(masses, dtype),
        dt=jnp.asarray(dt, dtype),
        step=jnp.asarray(0, jnp.int32),
        key=key,
        constraint_failed=jnp.asarray(False),
    )


def _maybe_remove_com(state, interval):
    if not interval:
        return state.velocities
    due = state.step % interval == 0
    return jnp.where(due, remove_com_velocity(state.velocities, state.masses), state.velocities)


def _kick(velocities, forces, invm, dt):
    # forces may be float32 under mixed precision: cast, then accumulate in the velocity dtype
    return velocities + (dt * invm)[:, None] * forces.astype(velocities.dtype)


def _constraint_velocity(x_new, x_free, invm, dt):
    """The constraint displacement as a velocity, for atoms with mass only (a virtual site is
    placed, not moved: it keeps zero velocity)."""
    return jnp.where((invm > 0)[:, None], (x_new - x_free) / dt, 0.0)


def _check_interval(interval):
    if not isinstance(interval, int) or interval < 0:
        raise ValueError(f"remove_com_interval must be an int >= 0 (0: never), got {interval!r}")


# ---------------------------------------------------------------------------------------------
# Velocity Verlet (NVE)
# ---------------------------------------------------------------------------------------------


def velocity_verlet(remove_com_interval: int = 0) -> Integrator:
    """Velocity Verlet (NVE), with RATTLE when constraints are given.

    One step: (COM motion removed if due) -> v += dt/2 F/m -> x' = x + dt v ->
    constrain x' (SHAKE/SETTLE along the bonds of x) and fold the constraint
    displacement into v -> F = force(x') -> v += dt/2 F/m -> constrain v at x'
    (RATTLE). Positions, velocities and forces are all at the same time, so
    ``potential_energy + kinetic_energy`` is the conserved energy. Without
    constraints the trajectory is the one of OpenMM's (leapfrog)
    VerletIntegrator.

    Args:
        remove_com_interval: remove centre-of-mass motion at the start of every
            this many steps (0: never; static).

    Returns:
        ``Integrator``: ``init(positions, velocities, masses, force_fn, *, dt,
        key=None) -> VerletState`` and ``step(state, force_fn, constraints=None,
        box=None) -> VerletState``.
    """
    _check_interval(remove_com_interval)

    def init(positions, velocities, masses, force_fn, *, dt, key=None):
        return VerletState(**_base_fields(positions, velocities, masses, force_fn, dt, key))

    def step(state, force_fn, constraints: Constraints | None = None, box=None):
        invm = inverse_masses(state.masses)
        x, dt = state.positions, state.dt
        v = _maybe_remove_com(state, remove_com_interval)
        v = _kick(v, state.forces, invm, 0.5 * dt)
        x_free = x + dt * v * (invm > 0)[:, None]
        x_new, ok_x = constrain_positions(constraints, x, x_free, invm, box)
        v = v + _constraint_velocity(x_new, x_free, invm, dt)
        energy, forces = force_fn(x_new)
        v = _kick(v, forces, invm, 0.5 * dt)
        v, ok_v = constrain_velocities(constraints, x_new, v, invm, box)
        return dataclasses.replace(
            state, positions=x_new, velocities=v, forces=forces.astype(x.dtype),
            potential_energy=energy.astype(state.potential_energy.dtype), step=state.step + 1,
            constraint_failed=state.constraint_failed | ~ok_x | ~ok_v)

    return Integrator(init, step)


# ---------------------------------------------------------------------------------------------
# Langevin middle (NVT)
# ---------------------------------------------------------------------------------------------


def _middle_step(state, force_fn, constraints, box, remove_com_interval, thermostat):
    """The step of both middle-scheme thermostats (LangevinMiddle, Nose-Hoover): V R O R.

    (COM removal if due) -> V: v += dt F/m and the velocity constraints at x -> R: x' = x + v dt/2
    -> O: ``thermostat(v, inverse_masses) -> (v, changed state fields)`` -> R: x' += v dt/2 ->
    constrain x' (along the bonds of x) and fold the displacement / dt into v -> forces at x'.
    """
    invm = inverse_masses(state.masses)
    moving = (invm > 0)[:, None]
    x, dt = state.positions, state.dt
    v = _maybe_remove_com(state, remove_com_interval)
    v = _kick(v, state.forces, invm, dt)
    v, ok_v = constrain_velocities(constraints, x, v, invm, box)
    x_free = x + 0.5 * dt * v * moving
    v, changed = thermostat(v, invm)
    x_free = x_free + 0.5 * dt * v * moving
    x_new, ok_x = constrain_positions(constraints, x, x_free, invm, box)
    v = v + _constraint_velocity(x_new, x_free, invm, dt)
    energy, forces = force_fn(x_new)
    return dataclasses.replace(
        state, positions=x_new, velocities=v, forces=forces.astype(x.dtype),
        potential_energy=energy.astype(state.potential_energy.dtype), step=state.step + 1,
        constraint_failed=state.constraint_failed | ~ok_x | ~ok_v, **changed)


def langevin_middle(remove_com_interval: int = 1) -> Integrator:
    """Langevin dynamics with OpenMM's LangevinMiddleIntegrator splitting (V R O R).

    One step, in OpenMM's order (Zhang, Liu, Zhang, Chen, J. Phys. Chem. A 123,
    6056 (2019)):

    1. COM motion removed if due (OpenMM's CMMotionRemover runs before the forces).
    2. V: v += dt F/m, then the velocity constraints at x (RATTLE/SETTLE).
    3. R: x' = x + v dt/2.
    4. O: v = a v + sqrt((1 - a^2) kT/m) xi, a = exp(-friction dt).
    5. R: x' += v dt/2.
    6. Constrain x' (along the bonds of x), and add the constraint displacement
       divided by dt to v.
    7. x = x'; forces at x for the next step.

    The velocities in the state are the ones OpenMM reports (its kinetic energy
    uses them unshifted).

    Args:
        remove_com_interval: COM motion removal every this many steps (0: never;
            static). OpenMM's default systems carry a CMMotionRemover with interval 1.

    Returns:
        ``Integrator``: ``init(positions, velocities, masses, force_fn, *, dt,
        temperature, friction, key) -> LangevinState`` (temperature [K], friction
        [1/ps]) and ``step(state, force_fn, constraints=None, box=None)``.
    """
    _check_interval(remove_com_interval)

    def init(positions, velocities, masses, force_fn, *, dt, temperature, friction, key):
        fields = _base_fields(positions, velocities, masses, force_fn, dt, key)
        dtype = fields["positions"].dtype
        return LangevinState(**fields, kT=BOLTZMANN * jnp.asarray(temperature, dtype),
                             friction=jnp.asarray(friction, dtype))

    def step(state, force_fn, constraints: Constraints | None = None, box=None):
        key, noise_key = jax.random.split(state.key)

        def thermostat(v, invm):  # O: exact Ornstein-Uhlenbeck update over dt
            a = jnp.exp(-state.friction * state.dt)
            sigma = jnp.sqrt((1.0 - a * a) * state.kT * invm)
            return a * v + sigma[:, None] * jax.random.normal(noise_key, v.shape, v.dtype), {"key": key}

        return _middle_step(state, force_fn, constraints, box, remove_com_interval, thermostat)

    return Integrator(init, step)


# ---------------------------------------------------------------------------------------------
# Nose-Hoover chain (NVT)
# ---------------------------------------------------------------------------------------------

# Yoshida-Suzuki weights for the chain propagation, by order.
_YOSHIDA_SUZUKI = {
    1: (1.0,),
    3: (0.828981543588751, -0.657963087177502, 0.828981543588751),
    5: (0.2967324292201065, 0.2967324292201065, -0.186929716880426, 0.2967324292201065,
        0.2967324292201065),
    7: (0.784513610477560, 0.235573213359357, -1.17767998417887, 1.31518632068391,
        -1.17767998417887, 0.235573213359357, 0.784513610477560),
}


def _propagate_chain(kinetic, xi, vxi, n_dof, kT, omega, dt, n_mts, weights):
    """Advance a Nose-Hoover chain by dt; returns (velocity scale, xi, vxi).

    Martyna-Tuckerman-Klein chain with multiple time steps and Yoshida-Suzuki
    factorisation, as OpenMM's NoseHooverChain: masses Q_0 = n_dof kT/omega^2,
    Q_i = kT/omega^2.
    """
    length = xi.shape[0]
    q = jnp.full((length,), kT / (omega * omega)).at[0].multiply(n_dof)
    ke2 = 2.0 * kinetic
    v = [vxi[k] for k in range(length)]
    x = [xi[k] for k in range(length)]
    g = [None] * length
    g[0] = (ke2 - n_dof * kT) / q[0]
    for k in range(length - 1):
        g[k + 1] = (q[k] * v[k] * v[k] - kT) / q[k + 1]
    scale = jnp.ones_like(kinetic)
    for _ in range(n_mts):
        for weight in weights:
            h = weight * dt / n_mts
            v[-1] = v[-1] + 0.5 * h * g[-1]
            for k in range(length - 2, -1, -1):
                damp = jnp.exp(-0.25 * h * v[k + 1])
                v[k] = damp * (damp * v[k] + 0.5 * h * g[k])
            scale = scale * jnp.exp(-h * v[0])
            x = [x[k] + h * v[k] for k in range(length)]
            g[0] = (scale * scale * ke2 - n_dof * kT) / q[0]
            for k in range(length - 1):
                damp = jnp.exp(-0.25 * h * v[k + 1])
                v[k] = damp * (damp * v[k] + 0.5 * h * g[k])
                g[k + 1] = (q[k] * v[k] * v[k] - kT) / q[k + 1]
            v[-1] = v[-1] + 0.5 * h * g[-1]
    return scale, jnp.stack(x), jnp.stack(v)


def nose_hoover_chain(chain_length: int = 3, n_mts: int = 3, n_yoshida_suzuki: int = 7,
                      remove_com_interval: int = 1) -> Integrator:
    """Nose-Hoover chain thermostat (NVT) with OpenMM's NoseHooverIntegrator scheme.

    One step, as OpenMM's reference kernel: (COM removal if due) -> v += dt F/m
    and velocity constraints at x -> x' = x + v dt/2 -> the chain is propagated
    by dt from the current kinetic energy and all velocities are scaled ->
    x' += v dt/2 -> constrain x' and fold the displacement into v -> forces.
    The conserved quantity is ``potential + kinetic + heat_bath_energy(state)``.

    ``n_dof`` passed to ``init`` should be
    ``count_degrees_of_freedom(n_atoms, n_constraints, remove_com)``, as OpenMM
    subtracts constraints and, with a CMMotionRemover, 3.

    Args:
        chain_length: thermostats in the chain (static).
        n_mts: multiple time steps of the chain propagation (static).
        n_yoshida_suzuki: 1, 3, 5 or 7 Yoshida-Suzuki weights (static).
        remove_com_interval: COM motion removal interval (0: never; static).

    Returns:
        ``Integrator``: ``init(positions, velocities, masses, force_fn, *, dt,
        temperature, collision_frequency, n_dof, key=None) -> NoseHooverState``
        and ``step(state, force_fn, constraints=None, box=None)``.
    """
    _check_interval(remove_com_interval)
    if n_yoshida_suzuki not in _YOSHIDA_SUZUKI:
        raise ValueError(f"n_yoshida_suzuki must be 1, 3, 5 or 7, got {n_yoshida_suzuki}")
    if chain_length < 1 or n_mts < 1:
        raise ValueError("chain_length and n_mts must be >= 1")
    weights = _YOSHIDA_SUZUKI[n_yoshida_suzuki]

    def init(positions, velocities, masses, force_fn, *, dt, temperature, collision_frequency,
             n_dof, key=None):
        fields = _base_fields(positions, velocities, masses, force_fn, dt, key)
        dtype = fields["positions"].dtype
        return NoseHooverState(
            **fields, kT=BOLTZMANN * jnp.asarray(temperature, dtype),
            collision_frequency=jnp.asarray(collision_frequency, dtype),
            n_dof=jnp.asarray(n_dof, dtype),
            chain_positions=jnp.zeros(chain_length, dtype),
            chain_velocities=jnp.zeros(chain_length, dtype))

    def step(state, force_fn, constraints: Constraints | None = None, box=None):
        def thermostat(v, invm):  # the chain over dt scales every velocity
            kinetic = kinetic_energy(v, state.masses)
            scale, xi, vxi = _propagate_chain(
                kinetic, state.chain_positions, state.chain_velocities, state.n_dof, state.kT,
                state.collision_frequency, state.dt, n_mts, weights)
            # OpenMM leaves everything unchanged when there is (almost) no kinetic energy yet
            idle = kinetic < 1e-8
            scale = jnp.where(idle, 1.0, scale)
            xi = jnp.where(idle, state.chain_positions, xi)
            vxi = jnp.where(idle, state.chain_velocities, vxi)
            return v * scale, {"chain_positions": xi, "chain_velocities": vxi}

        return _middle_step(state, force_fn, constraints, box, remove_com_interval, thermostat)

    return Integrator(init, step)


def heat_bath_energy(state: NoseHooverState):
    """Energy of the Nose-Hoover chain [kJ/mol]: sum Q_i vxi_i^2 / 2 + sum prefactor_i kT xi_i."""
    length = state.chain_positions.shape[0]
    prefactor = jnp.ones(length, state.kT.dtype).at[0].set(state.n_dof)
    q = prefactor * state.kT / state.collision_frequency**2
    return (0.5 * jnp.sum(q * state.chain_velocities**2)
            + jnp.sum(prefactor * state.kT * state.chain_positions))
