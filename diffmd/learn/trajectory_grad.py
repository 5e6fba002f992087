"""``diffmd.trajectory_grad``: a trajectory as a differentiable function of the parameters."""

from ._trajectory_grad import default_segment_length, make_trajectory_fn, refresh_forces

__all__ = [
    "default_segment_length",
    "make_trajectory_fn",
    "refresh_forces",
]
