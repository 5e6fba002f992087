"""Replica exchange: temperature and Hamiltonian swaps between ensemble members.

Both moves are ensemble moves for ``diffmd.ensemble.simulate(..., moves=[...])``:
the runner calls ``ens = move(ens, step)`` on the host after every chunk, and a
move acts only when ``step % every == 0``. Exchanges therefore happen at chunk
boundaries, and ``every`` must be a multiple of the run's ``chunk_size``
(a move that sees a multiple of ``every`` skipped raises ``InputError``).

    ens = diffmd.ensemble.prepare(system, replicas=4, temperature=[300, 330, 365, 400])
    trex = diffmd.replica_exchange.TemperatureExchange(every=50)
    result = diffmd.ensemble.simulate(ens, 10000, report_every=50, moves=[trex])
    result.move_log["temperature_exchange"]["acceptance"]   # one rate per neighbouring pair

A member is a thermodynamic state (its temperature, its parameters) and keeps it
for the whole run: an accepted swap exchanges the two members' *configurations*
(positions, velocities, forces, potential energies and neighbor tables), so each
member's ``state.csv`` and trajectory sample one fixed state, as the usual
"one file per temperature" convention (openmmtools' ``ReplicaExchangeSampler``
also keeps states fixed and permutes configurations). The thermostat
temperature ``kT``, friction, Nose-Hoover chain and noise key stay with the
member. Velocities moving from temperature T_j to T_i are scaled by
sqrt(T_i / T_j), which maps a Maxwell-Boltzmann sample at T_j onto one at T_i,
so the momenta drop out of the acceptance rule (Sugita & Okamoto, Chem. Phys.
Lett. 314, 141 (1999)).

Pairs are neighbours on a ladder; the even pairs (0,1), (2,3), ... and the odd
pairs (1,2), (3,4), ... are tried on alternate exchange steps (the attempt
number ``step // every`` picks which), each pair accepted independently with
the Metropolis probability. Random numbers come from
``fold_in(PRNGKey(seed), step)``, so a run is reproducible and a resumed run
makes the same decisions.

The math is pure and jitted (``exchange_log_ratio``, ``accept_swaps``,
``swap_permutation``, ``swap_configurations``); the move objects only hold the
ladders and the per-pair counts they log.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from ..md import Carry
from ._stack import Ensemble, batched_forces
from ..kernels.constants import BOLTZMANN
from ..kernels.errors import InputError, UnsupportedError

__all__ = ["TemperatureExchange", "HamiltonianExchange", "exchange_log_ratio", "temperature_log_ratio",
           "accept_swaps", "swap_permutation", "swap_configurations"]


# ----------------------------------------------------------------------------- pure math


def exchange_log_ratio(beta_i, beta_j, u_ii, u_jj, u_ij, u_ji):
    """Log of the Metropolis ratio for swapping the configurations of states i and j.

    log r = -[beta_i U_i(x_j) + beta_j U_j(x_i)] + [beta_i U_i(x_i) + beta_j U_j(x_j)];
    the swap is accepted with probability min(1, r). With one temperature this is
    -beta [(U_i(x_j) + U_j(x_i)) - (U_i(x_i) + U_j(x_j))] (Hamiltonian exchange); with one
    Hamiltonian it is (beta_i - beta_j)(U_i - U_j) (temperature exchange).

    Args:
        beta_i, beta_j: (P,) inverse thermal energies 1/kT of the two states [mol/kJ].
        u_ii, u_jj: (P,) each state's energy of its own configuration [kJ/mol].
        u_ij: (P,) energy of state i at configuration j, U_i(x_j) [kJ/mol].
        u_ji: (P,) energy of state j at configuration i, U_j(x_i) [kJ/mol].

    Returns:
        (P,) log r (dimensionless).
    """
    return -(beta_i * (u_ij - u_ii) + beta_j * (u_ji - u_jj))


def temperature_log_ratio(beta_i, beta_j, u_i, u_j):
    """Log Metropolis ratio of a temperature swap: (beta_i - beta_j)(U_i - U_j).

    Args:
        beta_i, beta_j: (P,) 1/kT of the two members [mol/kJ].
        u_i, u_j: (P,) potential energies of their configurations [kJ/mol].

    Returns:
        (P,) log r.
    """
    return (beta_i - beta_j) * (u_i - u_j)


def accept_swaps(key, log_ratio):
    """Metropolis decisions for independent swap attempts.

    Args:
        key: PRNG key.
        log_ratio: (P,) log of the acceptance ratios.

    Returns:
        ``(accepted, probability)``: (P,) bool and (P,) min(1, exp(log_ratio)).
    """
    probability = jnp.exp(jnp.minimum(log_ratio, 0.0))
    uniform = jax.random.uniform(key, log_ratio.shape, log_ratio.dtype)  # in [0, 1): p = 1 always accepts
    return uniform < probability, probability


def swap_permutation(n_members: int, i, j, accepted):
    """The member permutation of a round of disjoint pair swaps.

    Args:
        n_members: M (static).
        i, j: (P,) int member indices of the pairs (all 2P indices distinct).
        accepted: (P,) bool, which pairs swap.

    Returns:
        (M,) int32 ``perm``: member m receives the configuration of member ``perm[m]``.
    """
    perm = jnp.arange(n_members, dtype=jnp.int32)
    i, j = jnp.asarray(i, jnp.int32), jnp.asarray(j, jnp.int32)
    perm = perm.at[i].set(jnp.where(accepted, j, i))
    return perm.at[j].set(jnp.where(accepted, i, j))


def _take_members(tree, perm, n_members: int):
    """Rows ``perm`` of every leaf with a leading member axis."""
    def take(x):
        return x[perm] if getattr(x, "ndim", 0) >= 1 and x.shape[0] == n_members else x

    return jax.tree_util.tree_map(take, tree)


def swap_configurations(carry: Carry, perm, kT, forces=None, energies=None) -> Carry:
    """Move configurations between members: member m gets member ``perm[m]``'s.

    Positions, velocities, forces, potential energies and neighbor tables move;
    everything else in the state (``kT``, friction, thermostat chain, noise key,
    masses, step) stays with the member. Velocities are scaled by
    sqrt(kT[m] / kT[perm[m]]) to the receiving member's temperature.

    Args:
        carry: stacked ``Carry`` (leading member axis M).
        perm: (M,) int permutation (``swap_permutation``).
        kT: (M,) thermal energies of the members [kJ/mol].
        forces: (M, N, 3) forces to store [kJ/mol/nm] (default: the moved ones; give
            them when the members' Hamiltonians differ).
        energies: (M,) potential energies to store [kJ/mol] (same default).

    Returns:
        The new ``Carry``.
    """
    st = carry.state
    n_members = st.positions.shape[0]
    scale = jnp.sqrt(kT / kT[perm]).astype(st.velocities.dtype)
    forces = st.forces[perm] if forces is None else forces
    energies = st.potential_energy[perm] if energies is None else energies
    state = dataclasses.replace(
        st, positions=st.positions[perm], velocities=st.velocities[perm] * scale[:, None, None],
        forces=forces.astype(st.forces.dtype), potential_energy=energies.astype(st.potential_energy.dtype))
    neighbors = None if carry.neighbors is None else _take_members(carry.neighbors, perm, n_members)
    return dataclasses.replace(carry, state=state, neighbors=neighbors)


def _temperature_round(carry: Carry, i, j, key):
    """One jitted temperature-exchange round over the pairs (i, j)."""
    st = carry.state
    beta = 1.0 / st.kT
    u = st.potential_energy
    accepted, probability = accept_swaps(key, temperature_log_ratio(beta[i], beta[j], u[i], u[j]))
    perm = swap_permutation(u.shape[0], i, j, accepted)
    return swap_configurations(carry, perm, st.kT), accepted, probability


def _make_hamiltonian_round(energy_fn):
    """The jitted Hamiltonian-exchange round for one energy function."""
    def round_(carry: Carry, params, terms, box, i, j, key):
        st = carry.state
        n_members = st.positions.shape[0]
        proposal = swap_permutation(n_members, i, j, jnp.ones(i.shape, bool))
        # U_m(x_proposal[m]) for every member at once, with the table that belongs to those positions
        trial_energy, trial_forces = batched_forces(
            energy_fn, params, terms, st.positions[proposal], box,
            None if carry.neighbors is None else _take_members(carry.neighbors, proposal, n_members))
        trial_energy = trial_energy.astype(st.potential_energy.dtype)
        beta = 1.0 / st.kT
        u = st.potential_energy
        log_ratio = exchange_log_ratio(beta[i], beta[j], u[i], u[j], trial_energy[i], trial_energy[j])
        accepted, probability = accept_swaps(key, log_ratio)
        perm = swap_permutation(n_members, i, j, accepted)
        moved = perm != jnp.arange(n_members, dtype=perm.dtype)
        forces = jnp.where(moved[:, None, None], trial_forces.astype(st.forces.dtype), st.forces[perm])
        energies = jnp.where(moved, trial_energy, u[perm])
        return swap_configurations(carry, perm, st.kT, forces, energies), accepted, probability

    return jax.jit(round_)


_temperature_round_jit = jax.jit(_temperature_round)


# ----------------------------------------------------------------------------- host-side moves


def _member_fingerprints(ens: Ensemble) -> list[str]:
    """A digest of each member's parameters and topology (equal digest: same Hamiltonian)."""
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get((ens.params, ens.terms)))]
    out = []
    for m in range(ens.size):
        h = hashlib.sha1()
        for x in leaves:
            h.update(np.ascontiguousarray(x[m] if x.ndim >= 1 and x.shape[0] == ens.size else x).tobytes())
        out.append(h.hexdigest())
    return out


def _member_kT(ens: Ensemble) -> np.ndarray:
    st = ens.carry.state
    if not hasattr(st, "kT"):
        raise InputError(f"replica exchange needs a thermostat: the {type(st).__name__} of this ensemble has no "
                         "temperature (prepare it with integrator='langevin' or 'nose-hoover')")
    return np.asarray(jax.device_get(st.kT), np.float64)


def _same_place(new, old):
    sharding = getattr(old, "sharding", None)
    return new if sharding is None else jax.device_put(new, sharding)


class _Exchange(abc.ABC):
    """Shared bookkeeping of the exchange moves: ladders, pairs, counts, the log."""

    name = "exchange"

    def __init__(self, every: int, seed: int, name: str | None):
        if isinstance(every, bool) or int(every) != every or every < 1:
            raise InputError(f"every must be a positive number of steps (a multiple of the chunk size), got {every!r}")
        if int(seed) != seed:
            raise InputError(f"seed must be an integer, got {seed!r}")
        self.every, self.seed = int(every), int(seed)
        if name is not None:
            self.name = str(name)
        self._members = None
        self._last_step = None

    # -- set-up, once per ensemble layout
    @abc.abstractmethod
    def _ladders(self, ens: Ensemble, kT: np.ndarray) -> list[list[int]]:
        """The members of each exchange ladder, neighbours adjacent."""

    def _setup(self, ens: Ensemble) -> None:
        if self._members is not None:
            if ens.members != self._members:
                raise InputError(f"this {type(self).__name__} was used with a different ensemble; make a new one")
            return
        if ens.carry.barostat is not None:
            raise UnsupportedError("replica exchange of NPT members (a barostat in the carry) is not supported")
        kT = _member_kT(ens)
        self._kT = kT
        pairs = []
        for ladder in self._ladders(ens, kT):
            pairs += [(ladder[k], ladder[k + 1], k % 2) for k in range(len(ladder) - 1)]
        self.pairs = [(a, b) for a, b, _ in pairs]
        self._parity = np.array([p for _, _, p in pairs], np.int64)
        self.attempts = np.zeros(len(pairs), np.int64)
        self.accepted = np.zeros(len(pairs), np.int64)
        self.replica_at_member = np.arange(ens.size)  # which starting configuration each member holds
        self.last = None
        self._members = ens.members

    def _check_spacing(self, step: int) -> None:
        last, self._last_step = self._last_step, step
        if last is None or step <= last:
            return
        if (step - 1) // self.every > last // self.every:
            raise InputError(f"{self.name}: a multiple of every={self.every} fell between the chunk ends {last} and "
                             f"{step}, so an exchange was skipped: every must be a multiple of the run's chunk_size")

    @abc.abstractmethod
    def _round(self, ens: Ensemble, i, j, key):
        """One jitted round over the pairs (i, j): ``(carry, accepted, probability)``."""

    def __call__(self, ens: Ensemble, step: int) -> Ensemble:
        """Attempt one exchange round if ``step % every == 0``; else return ``ens`` unchanged.

        Args:
            ens: the ensemble at the end of a chunk.
            step: the step count reached (the runner's ``start + done``).

        Returns:
            The ensemble with swapped configurations (or ``ens``).
        """
        step = int(step)
        self._setup(ens)
        self._check_spacing(step)
        if step % self.every:
            return ens
        select = np.flatnonzero(self._parity == (step // self.every) % 2)
        if select.size == 0:
            return ens
        i = jnp.asarray([self.pairs[k][0] for k in select], jnp.int32)
        j = jnp.asarray([self.pairs[k][1] for k in select], jnp.int32)
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), step)
        carry, accepted, probability = self._round(ens, i, j, key)
        # keep every array where it was (e.g. split over the member mesh), so the next chunk does not recompile
        carry = jax.tree_util.tree_map(_same_place, carry, ens.carry)
        accepted = np.asarray(accepted, bool)
        self.attempts[select] += 1
        self.accepted[select] += accepted
        for k, a in zip(select, accepted):
            if a:
                p, q = self.pairs[k]
                self.replica_at_member[[p, q]] = self.replica_at_member[[q, p]]
        self.last = {"step": step, "pairs": [self.pairs[k] for k in select],
                     "probability": np.asarray(probability, np.float64), "accepted": accepted}
        return dataclasses.replace(ens, carry=carry)

    def acceptance(self) -> np.ndarray:
        """(n_pairs,) accepted / attempted per neighbouring pair (NaN before any attempt)."""
        if self._members is None:
            return np.zeros(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.attempts > 0, self.accepted / np.maximum(self.attempts, 1), np.nan)

    def log(self) -> dict:
        """What the move did, JSON-ready: ``pairs`` (member indices), ``acceptance`` (rate per pair,
        None before any attempt), ``attempts``, ``accepted``, ``temperatures_k`` of each pair,
        ``replica_at_member`` (which starting configuration each member now holds), ``every``, ``seed``."""
        if self._members is None:
            return {"pairs": [], "acceptance": [], "attempts": [], "accepted": [], "temperatures_k": [],
                    "replica_at_member": [], "every": self.every, "seed": self.seed}
        temps = self._kT / BOLTZMANN
        return {"pairs": [[int(a), int(b)] for a, b in self.pairs],
                "acceptance": [None if np.isnan(r) else float(r) for r in self.acceptance()],
                "attempts": [int(n) for n in self.attempts], "accepted": [int(n) for n in self.accepted],
                "temperatures_k": [[float(temps[a]), float(temps[b])] for a, b in self.pairs],
                "replica_at_member": [int(r) for r in self.replica_at_member],
                "every": self.every, "seed": self.seed}


class TemperatureExchange(_Exchange):
    """Temperature replica exchange (parallel tempering) as an ensemble move.

    Within each group of members that share a system and identical parameters,
    members are ordered by their thermostat temperature (``state.kT``) into a
    ladder; neighbouring pairs are swapped with probability
    min(1, exp((beta_i - beta_j)(U_i - U_j))), U the potential energies in the
    carry. An accepted swap moves the configurations (velocities rescaled by
    sqrt(T_new/T_old)); each member keeps its temperature, so its files hold one
    temperature. Forces and energies move with the configurations, which is exact
    because the members of a ladder share one Hamiltonian.

    Args:
        every: steps between exchange attempts; a multiple of the run's chunk size
            (exchanges happen at chunk boundaries, when ``step % every == 0``).
        seed: seed of the acceptance draws (key ``fold_in(PRNGKey(seed), step)``).
        name: key of this move's log in ``EnsembleResult.move_log`` (default
            ``"temperature_exchange"``).

    Attributes:
        pairs: neighbouring member pairs (after the first call), in ladder order.
        attempts, accepted: (n_pairs,) counts.
        replica_at_member: (M,) which starting configuration each member holds.
        last: the last round's ``step``, ``pairs``, ``probability`` and ``accepted``.

    Raises:
        InputError: bad ``every``; members without a thermostat; an exchange skipped
        because ``every`` is not a multiple of the chunk size.
    """

    name = "temperature_exchange"

    def __init__(self, every: int = 100, seed: int = 0, *, name: str | None = None):
        super().__init__(every, seed, name)

    def _ladders(self, ens, kT):
        groups: dict = {}
        for m, (member, digest) in enumerate(zip(ens.members, _member_fingerprints(ens))):
            groups.setdefault((member.system_index, digest), []).append(m)
        return [sorted(g, key=lambda m: (kT[m], m)) for g in groups.values()]

    def _round(self, ens, i, j, key):
        return _temperature_round_jit(ens.carry, i, j, key)


class HamiltonianExchange(_Exchange):
    """Hamiltonian replica exchange between members with different parameters.

    Within each group of members that share a system and a temperature, members
    form a ladder in member order (the order of ``params`` given to
    ``diffmd.ensemble.prepare``); neighbouring pairs are swapped with probability
    min(1, exp(-beta[(U_i(x_j) + U_j(x_i)) - (U_i(x_i) + U_j(x_j))])). The cross
    energies and the forces after a swap come from one batched force evaluation
    (``diffmd.ensemble.batched_forces``) at the swapped positions and tables, with
    each member's own parameters (and topology, for padded batches). Combine with
    ``TemperatureExchange`` for two-dimensional exchange (members with one
    temperature share a Hamiltonian ladder, members with one Hamiltonian a
    temperature ladder).

    Args:
        every: steps between exchange attempts; a multiple of the run's chunk size.
        seed: seed of the acceptance draws.
        name: key of this move's log (default ``"hamiltonian_exchange"``).

    Attributes:
        as ``TemperatureExchange``.

    Raises:
        InputError: as ``TemperatureExchange``.
    """

    name = "hamiltonian_exchange"

    def __init__(self, every: int = 100, seed: int = 0, *, name: str | None = None):
        super().__init__(every, seed, name)
        self._compiled = None

    def _ladders(self, ens, kT):
        groups: dict = {}
        for m, member in enumerate(ens.members):
            # temperatures equal to 1e-9 relative: one Hamiltonian ladder
            groups.setdefault((member.system_index, round(float(np.log(kT[m])), 9)), []).append(m)
        return list(groups.values())

    def _round(self, ens, i, j, key):
        if self._compiled is None or self._compiled[0] is not ens.energy_fn:
            self._compiled = (ens.energy_fn, _make_hamiltonian_round(ens.energy_fn))
        return self._compiled[1](ens.carry, ens.params, ens.terms, ens.box, i, j, key)
