"""diffmd's exception hierarchy (re-exported as ``diffmd.errors``).

Rooted in ``Exception``; input problems are also ``ValueError`` so that code
written against plain Python conventions keeps working.
"""


class DiffmdError(Exception):
    """Base class of every error diffmd raises on purpose."""


class InputError(DiffmdError, ValueError):
    """Bad input: a malformed file, a wrong shape, NaN coordinates, an unknown option.

    Raised on the host before tracing; the message names the problem and the fix.
    """


class UnsupportedError(DiffmdError, NotImplementedError):
    """A feature that diffmd does not (yet) provide, named in the message."""


class SimulationError(DiffmdError, RuntimeError):
    """A failure detected while running: NaN energies, unrecoverable overflow."""
