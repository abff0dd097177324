"""Errors of a run that a user can act on: raised with a one-line message that says why and
what to do (``main``, ``evaluate``, ``predict`` and ``convert`` print them without a trace)."""


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or Inf."""


class RunError(ValueError):
    """The run cannot go ahead as asked (workdir, resume, checkpoints); the message says why
    and what to do. Raised before anything in the workdir is changed, unless it says so."""
