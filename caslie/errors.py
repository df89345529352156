"""The errors a user can act on: one family, so every entry point prints them as one line.

Every error here derives from :class:`CaslieError`. ``train.py`` and ``caslie`` catch the base
class, print ``<program>: error: <message>`` without a traceback and exit with code 2. Anything
else that escapes is a bug and keeps its traceback. Each class also derives from the built-in
exception it refines (``ValueError``, ``FileNotFoundError``...), so callers that catch those keep
working. This module imports nothing from the project: every layer may raise these.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
"""Exit code of an entry point stopped by a :class:`CaslieError` (argparse uses 2 as well)."""


class CaslieError(Exception):
    """Base of every error that is the user's to fix (config, data, caches, paths, hub access)."""


class ConfigError(CaslieError, ValueError):
    """A config that cannot run: unknown key, bad value, or inconsistent sections."""


class UnknownTaskError(ConfigError):
    """A task name or code that is not one of the seven MMECInstruct tasks."""


class DataError(CaslieError, ValueError):
    """Rows that cannot be used: bad files, bad rows, or nothing left after selection."""


class RowError(DataError):
    """One invalid row: where it is, its id, the field and the problem."""

    def __init__(self, location: str, row_id: str | None, field_name: str, problem: str):
        self.location, self.row_id, self.field, self.problem = location, row_id, field_name, problem
        rid = f"row {row_id}" if row_id else "row"
        super().__init__(f"{location}: {rid}: field '{field_name}': {problem}")


class CoverageError(DataError):
    """Votes (or captions) are missing for rows the run needs."""


class CacheError(CaslieError, RuntimeError):
    """A caption or vote cache that cannot be read (corrupt entry, missing folder)."""


class UnavailableError(CaslieError, OSError):
    """A model, tokenizer, processor or dataset that cannot be loaded: not in the local cache in
    offline mode, not on the hub, gated, without the revision or file asked for, or a local folder
    that lacks its weights, tokenizer files or ``config.json`` (see :mod:`caslie.hub`)."""


class HubUnavailableError(UnavailableError, RuntimeError):
    """A hub id was requested and the hub cannot be reached."""


class MissingPathError(CaslieError, FileNotFoundError):
    """A file or folder named by a config or a command-line argument does not exist."""


class CheckpointError(CaslieError, ValueError):
    """A checkpoint that does not fit the run that loads it."""


class NonFiniteLossError(CaslieError, RuntimeError):
    """The training loss became NaN or infinite (the state at that step is saved first)."""
