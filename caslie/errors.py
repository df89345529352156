"""Errors raised while training that are the user's to act on (kept free of heavy imports)."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (the state at that step is saved first)."""
