"""PaiNN-style E(3)-equivariant message passing (flax linen) on diffmd's (N, K) pair table.

Every atom carries scalar features s (N, F) and vector features v (N, 3, F).
Messages mix neighbors' scalars and vectors with the unit pair direction;
vectors are only ever scaled by invariants or mixed linearly across channels
(no bias), so v rotates with the molecule and the energy, read out from s
alone, is invariant.

References:
    K. T. Schütt, O. T. Unke, M. Gastegger, "Equivariant message passing for the
    prediction of tensorial properties and molecular spectra", ICML 2021.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ._schnet import AtomEnergyHead, cosine_cutoff, gather_neighbors

# keeps the gradient of |V v| finite where a vector feature is exactly zero
# (all of them are before the first message)
_NORM_EPS = 1e-8


class PaiNNMessage(nn.Module):
    """Neighbor messages: scalar and vector increments (residual)."""

    features: int
    cutoff: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, s, v, rbf, unit, r, mask, idx):
        f = self.features
        dense = dict(dtype=self.dtype, param_dtype=self.dtype)
        phi = nn.Dense(f, name="phi1", **dense)(s)
        phi = nn.Dense(3 * f, name="phi2", **dense)(jax.nn.silu(phi))
        w = nn.Dense(3 * f, name="filter", **dense)(rbf) * (cosine_cutoff(r, self.cutoff) * mask)[..., None]
        x = gather_neighbors(phi, idx) * w  # (N, K, 3F)
        a_ss, a_vv, a_vs = x[..., :f], x[..., f:2 * f], x[..., 2 * f:]
        v_j = gather_neighbors(v, idx)  # (N, K, 3, F)
        ds = jnp.sum(a_ss, axis=1)
        dv = jnp.sum(a_vv[:, :, None, :] * v_j + a_vs[:, :, None, :] * unit[..., None], axis=1)
        return s + ds, v + dv


class PaiNNUpdate(nn.Module):
    """Atomwise coupling of scalar and vector channels (residual)."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, s, v):
        f = self.features
        dense = dict(dtype=self.dtype, param_dtype=self.dtype)
        uv = nn.Dense(f, use_bias=False, name="U", **dense)(v)  # mixes channels of each component
        vv = nn.Dense(f, use_bias=False, name="V", **dense)(v)
        norm = jnp.sqrt(jnp.sum(vv * vv, axis=1) + _NORM_EPS)
        a = nn.Dense(f, name="mlp1", **dense)(jnp.concatenate([s, norm], axis=-1))
        a = nn.Dense(3 * f, name="mlp2", **dense)(jax.nn.silu(a))
        a_vv, a_sv, a_ss = a[:, :f], a[:, f:2 * f], a[:, 2 * f:]
        s = s + a_ss + a_sv * jnp.sum(uv * vv, axis=1)
        v = v + a_vv[:, None, :] * uv
        return s, v


class PaiNN(nn.Module):
    """PaiNN energy model: per-atom energies [kJ/mol] from species and pair geometry.

    Attributes:
        n_species: number of species (embedding rows).
        cutoff: interaction cutoff [nm].
        features: channels of the scalar and of the vector features.
        interactions: message + update blocks.
        n_rbf: radial functions sin(n pi r / rc) / (n pi r / rc), n = 1..n_rbf.
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
        # sin(n pi r / rc) / r, normalised to sinc (values in [-0.22, 1]) so that
        # features stay O(1) whatever the length unit and the number of functions
        arg = jnp.arange(1, self.n_rbf + 1, dtype=self.dtype).reshape(1, 1, -1) * (jnp.pi / self.cutoff) * r[..., None]
        rbf = jnp.sin(arg) / arg
        unit = dr / r[..., None]
        s = nn.Embed(self.n_species, self.features, dtype=self.dtype, param_dtype=self.dtype, name="embed")(species)
        v = jnp.zeros(s.shape[:1] + (3, self.features), self.dtype)
        for t in range(self.interactions):
            s, v = PaiNNMessage(self.features, self.cutoff, self.dtype, name=f"message{t}")(s, v, rbf, unit, r, mask,
                                                                                         idx)
            s, v = PaiNNUpdate(self.features, self.dtype, name=f"update{t}")(s, v)
        return AtomEnergyHead(self.n_species, max(self.features // 2, 1), self.energy_shift, self.energy_scale,
                              "silu", self.dtype, name="head")(s, species)
