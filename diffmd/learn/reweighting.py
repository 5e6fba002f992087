"""``diffmd.reweighting``: DiffTRe-style reweighted ensemble averages and their gradients."""

from ._reweighting import (
    FitResult,
    ReferenceSample,
    effective_sample_size,
    fit,
    frame_energies,
    reference_sample,
    reweighted_mean,
    reweighting_weights,
)

__all__ = [
    "FitResult",
    "ReferenceSample",
    "effective_sample_size",
    "fit",
    "frame_energies",
    "reference_sample",
    "reweighted_mean",
    "reweighting_weights",
]
