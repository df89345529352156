"""What the entry points print: one log handler, rank zero at INFO, and known third-party noise
filtered there (not globally, so a library user's own warnings setup is left alone).

Each filter names the message it drops and why it is noise for this project's users.
"""

from __future__ import annotations

import logging
import sys
import warnings

KNOWN_NOISE = (
    # transformers 5 deprecates the attribute peft still reads when gradient checkpointing is on.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
    # Lightning's own use of a torch pytree API that torch deprecated.
    (Warning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # The sampler position travels in the module's checkpoint, which this check cannot see.
    (Warning, r"You're resuming from a checkpoint that ended before"),
    # On a machine with SLURM installed, every local run: the sbatch scripts start srun themselves.
    (Warning, r"The `srun` command is available on your system but is not used"),
)
"""(category, message pattern) of warnings that say nothing a user can act on."""


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def setup_logging(rank_zero: bool = True) -> None:
    """One handler, on the root logger, for every library: Lightning's own handler is removed (its
    lines would print twice), ranks other than zero print warnings and errors only (Python
    warnings on rank zero only), and the known noise is dropped.

    Args:
        rank_zero: Whether this process is rank zero of its job.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO if rank_zero else logging.WARNING)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lib = logging.getLogger(name)
        lib.handlers = []
        lib.propagate = True
        lib.setLevel(logging.NOTSET)
    # An advertisement for a hosted logger, at every Trainer start.
    handler.addFilter(_DropMessages("💡 Tip: For seamless cloud logging"))
    # Says at every save of a full training checkpoint that it is one: noise in a job log.
    logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").setLevel(
        logging.WARNING
    )
    quiet_known_warnings()
    # Python warnings go through the same handler; every rank runs the same code and would print
    # each one once per rank, so only rank zero shows them (errors still show on every rank).
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if rank_zero else logging.ERROR)
    if not sys.stderr.isatty():
        quiet_progress_bars()


def quiet_known_warnings() -> None:
    """Drop the warnings in :data:`KNOWN_NOISE`."""
    for category, pattern in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=pattern, category=category)


def quiet_progress_bars() -> None:
    """No download/load progress bars from the hub libraries in a log file (each would leave a
    row of carriage-return frames in a SLURM ``.out``)."""
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # the hub client is optional for commands that load no model
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
