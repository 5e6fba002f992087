"""diffmd: JAX-native, differentiable molecular dynamics for biomolecules."""

from .kernels import constants as units  # noqa: F401
from .kernels import errors  # noqa: F401
