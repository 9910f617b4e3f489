"""Errors and warnings graphprune raises on purpose.

Every ``GraphpruneError`` carries a one-line message saying what failed, where, and how to fix
it; the command line prints exactly that line (and the traceback only with ``--debug``).
"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``exc``'s message, cut to ``limit`` characters ("" when it
    has none): what an error line quotes of an exception raised elsewhere."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return ""


def summary(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line`` of an exception, or just its type when the message is empty."""
    line = first_line(exc, limit)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


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
