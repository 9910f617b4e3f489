"""Errors and warnings graphprune raises on purpose.

Every ``GraphpruneError`` carries a one-line message saying what failed, where, and how to fix
it; the command line prints exactly that line (and the traceback only with ``--debug``).
"""

from __future__ import annotations


class GraphpruneError(Exception):
    """A failure the user can act on.  ``hint`` says how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class TraceFailure(GraphpruneError):
    """The model (not just a submodule) cannot be traced by torch.fx."""


class MaskError(GraphpruneError):
    """Requested masks, thresholds or ratios that do not fit the model."""


class VerificationError(GraphpruneError):
    """The slim model does not compute what the zero-masked model computes."""


class CheckpointError(GraphpruneError):
    """A checkpoint that cannot be read, or that may not be read safely."""


class GraphpruneWarning(UserWarning):
    """Something was handled conservatively (a leaf fallback, a pinned op)."""
