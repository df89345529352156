"""Stop requests by signal: SIGUSR1 (SLURM's warning before a time limit or preemption) and SIGTERM.

A signal handler runs between two bytecodes of whatever the main thread is doing, which can be the
middle of an optimiser step or a collective call. So the handler only records the signal; the
training loop acts on it at the next point where the state is whole (see
``callbacks/resume_point.py``): it saves and raises :class:`StopRequested`. The run then closes its
loggers, and only then is a SLURM job requeued (a requeue kills the job's processes at once).
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
REQUEUE_SIGNAL = signal.SIGUSR1
"""The signal ``sbatch --signal=USR1@<seconds>`` sends before the time limit: save, requeue, stop."""


class StopRequested(Exception):
    """The run stopped on a signal after saving what it needs to resume.

    Attributes:
        signum: The signal received.
        checkpoint: The checkpoint saved for the resume (``""`` when nothing new had to be saved).
        requeue: Whether the job should be put back in the queue (SIGUSR1).
        exit_code: ``128 + signum``, as a shell reports a process ended by that signal, so a
            scheduler never mistakes the stop for success.
    """

    def __init__(self, signum: int, where: str, checkpoint: str = "", requeue: bool = False):
        self.signum, self.checkpoint, self.requeue = signum, checkpoint, requeue
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        saved = f"saved {checkpoint}" if checkpoint else "the last resume point is kept"
        super().__init__(f"stopped by {name} during {where}; {saved}")


class StopSignals:
    """Records the first stop signal; :meth:`install` and :meth:`restore` swap the handlers.

    The handlers to give back are the ones in place when this object is made, before a Trainer
    installs its own (Lightning restores its originals when it ends; giving back what was there
    at :meth:`install` would put a finished Trainer's handlers back).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._original = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None or signum == signal.SIGTERM:  # a kill notice outranks a warning
            self.received = signum

    def install(self) -> None:
        """Take over the stop signals (again, if someone replaced the handlers meanwhile)."""
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) != self._handler:
                signal.signal(signum, self._handler)

    def restore(self) -> None:
        """Put back the handlers that were in place when this object was made."""
        for signum, handler in self._original.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
