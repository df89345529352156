"""What the entry points print: one log handler, rank zero at INFO, and known third-party noise
filtered there (not globally, so a library user's own warnings setup is left alone).

Each filter names the message it drops, the module that raises it and why it is noise for this
project's users. Two more are handled where they arise, in ``train.py``: wandb's "anonymous setting"
warning (the setting Lightning passes is left out) and Lightning's "Checkpoint directory ... exists
and is not empty" (dropped for a resumed fit into the run's own folder only).
"""

from __future__ import annotations

import logging
import sys
import warnings

KNOWN_NOISE = (
    # transformers 5 deprecates the attribute peft still reads when gradient checkpointing is on.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
    # Lightning's own use of a torch pytree API that torch deprecated.
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated",
     r"lightning\.pytorch\.utilities\._pytree"),
    # torch.utils.mkldnn (loaded by torch.fx, as under torch.compile) defines TorchScript methods at
    # import; nothing here scripts.
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated", r"torch\.jit\._script"),
    # The sampler position travels in the module's checkpoint, which this check cannot see.
    (Warning, r"You're resuming from a checkpoint that ended before",
     r"lightning\.pytorch\.loops\.training_epoch_loop"),
    # On a machine with SLURM installed, every local run: the sbatch scripts start srun themselves.
    (Warning, r"The `srun` command is available on your system but is not used",
     r"lightning\.fabric\.plugins\.environments\.slurm"),
)  # fmt: skip
"""(category, message pattern, module pattern) of warnings that say nothing a user can act on. Each
names the module that raises it (the same message from anywhere else is still shown)."""

KNOWN_NOISE_LOGS = (
    # An advertisement for a hosted logger, at every Trainer start.
    "💡 Tip: For seamless cloud logging",
)
"""Openings of log lines that Lightning's rank-zero loggers (:data:`RANK_ZERO_LOGGERS`) drop."""

RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
"""The loggers Lightning's ``rank_zero_info`` writes to (whichever of its packages loaded last)."""


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
    quiet_known_logs()
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
    """Drop the warnings in :data:`KNOWN_NOISE`, each only when its own module raises it."""
    for category, message, module in KNOWN_NOISE:
        # The whole module name, as `python -W` matches it (a bare pattern matches its start only).
        warnings.filterwarnings("ignore", message=message, category=category, module=module + r"\Z")


def quiet_known_logs() -> None:
    """Drop the log lines in :data:`KNOWN_NOISE_LOGS`, on Lightning's rank-zero loggers only."""
    drop = _DropMessages(*KNOWN_NOISE_LOGS)
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        # setup_logging may run twice in one process (a test, a command calling another).
        logger.filters = [f for f in logger.filters if not isinstance(f, _DropMessages)]
        logger.addFilter(drop)


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
