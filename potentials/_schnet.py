"""SchNet-style invariant message passing (flax linen) on diffmd's (N, K) pair table.

The module sees pair geometry already gathered from the neighbor table (see
``neural.pair_geometry``): displacements ``dr`` (N, K, 3) [nm], distances
``r`` (N, K) [nm], a validity mask (N, K) and the partner indices (N, K)
padded with N. It returns per-atom energies [kJ/mol]; the caller masks and sums.

References:
    K. T. Schütt et al., "SchNet - a deep learning architecture for molecules
    and materials", J. Chem. Phys. 148, 241722 (2018).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def shifted_softplus(x):
    """softplus(x) - log 2: zero at the origin, smooth (SchNet's activation)."""
    return jax.nn.softplus(x) - math.log(2.0)


def cosine_cutoff(r, cutoff: float):
    """Smooth envelope 0.5 (cos(pi r / rc) + 1) for r < rc, else 0 (Behler's f_c).

    Its value and first derivative vanish at the cutoff, so energies and forces
    stay continuous as pairs cross it.
    """
    inside = r < cutoff
    return jnp.where(inside, 0.5 * (jnp.cos(jnp.pi * jnp.minimum(r, cutoff) / cutoff) + 1.0), 0.0)


def gather_neighbors(features, idx):
    """Rows of ``features`` (N, ...) at ``idx`` (N, K), with index N giving zeros."""
    pad = jnp.zeros((1,) + features.shape[1:], features.dtype)
    return jnp.concatenate([features, pad], axis=0)[idx]


def _scalar_shift_init(values):
    values = np.asarray(values)

    def init(key, shape, dtype):
        del key
        return jnp.broadcast_to(jnp.asarray(values, dtype), shape)

    return init


class AtomEnergyHead(nn.Module):
    """Atomwise MLP to one number per atom, then a learnable per-species scale and shift.

    E_i = scale[s_i] * MLP(h_i) + shift[s_i]   [kJ/mol]
    """

    n_species: int
    hidden: int
    energy_shift: tuple
    energy_scale: tuple
    activation: str = "ssp"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, species):
        act = shifted_softplus if self.activation == "ssp" else jax.nn.silu
        y = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.dtype, name="out1")(h)
        y = nn.Dense(1, dtype=self.dtype, param_dtype=self.dtype, name="out2")(act(y))[:, 0]
        scale = self.param("atom_scale", _scalar_shift_init(self.energy_scale), (self.n_species,), self.dtype)
        shift = self.param("atom_shift", _scalar_shift_init(self.energy_shift), (self.n_species,), self.dtype)
        return scale[species] * y + shift[species]


class SchNetInteraction(nn.Module):
    """One continuous-filter convolution block with its atomwise update (residual)."""

    features: int
    cutoff: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h, rbf, r, mask, idx):
        dense = dict(dtype=self.dtype, param_dtype=self.dtype)
        # filter network: radial basis -> per-channel weights, faded out by the envelope
        w = nn.Dense(self.features, name="filter1", **dense)(rbf)
        w = nn.Dense(self.features, name="filter2", **dense)(shifted_softplus(w))
        w = w * (cosine_cutoff(r, self.cutoff) * mask)[..., None]
        x = nn.Dense(self.features, use_bias=False, name="in2f", **dense)(h)
        message = jnp.sum(gather_neighbors(x, idx) * w, axis=1)
        v = nn.Dense(self.features, name="f2out", **dense)(message)
        v = nn.Dense(self.features, name="update", **dense)(shifted_softplus(v))
        return h + v


class SchNet(nn.Module):
    """SchNet energy model: per-atom energies [kJ/mol] from species and pair geometry.

    Attributes:
        n_species: number of species (embedding rows).
        cutoff: interaction cutoff [nm].
        features: width of the atom features.
        interactions: number of interaction blocks.
        n_rbf: Gaussian radial basis functions on [0, cutoff].
        energy_shift, energy_scale: (n_species,) initial per-species shift and
            scale of the atomic energies [kJ/mol] (both learnable).
        dtype: compute and parameter dtype.
    """

    n_species: int
    cutoff: float
    features: int = 64
    interactions: int = 3
    n_rbf: int = 20
    energy_shift: tuple = ()
    energy_scale: tuple = ()
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, species, dr, r, mask, idx):
        del dr  # invariant model: distances only
        centers = jnp.linspace(0.0, self.cutoff, self.n_rbf, dtype=self.dtype)
        spacing = self.cutoff / max(self.n_rbf - 1, 1)
        gamma = 0.5 / spacing**2
        rbf = jnp.exp(-gamma * (r[..., None] - centers.reshape(1, 1, -1)) ** 2).astype(self.dtype)
        h = nn.Embed(self.n_species, self.features, dtype=self.dtype, param_dtype=self.dtype, name="embed")(species)
        for t in range(self.interactions):
            h = SchNetInteraction(self.features, self.cutoff, self.dtype, name=f"interaction{t}")(h, rbf, r, mask, idx)
        return AtomEnergyHead(self.n_species, max(self.features // 2, 1), self.energy_shift, self.energy_scale,
                              "ssp", self.dtype, name="head")(h, species)
