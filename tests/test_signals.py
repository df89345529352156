"""Stop signals are only recorded in the handler, and the handlers are given back."""

import os
import signal

from caslie.signals import StopRequested, StopSignals


def test_a_signal_is_recorded_not_acted_on_and_sigterm_outranks_sigusr1():
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    stops = StopSignals()
    stops.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stops.received == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)  # the process is still alive: only recorded
        assert stops.received == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stops.received == signal.SIGTERM
        # A Trainer installs its handlers, then this takes over again; the Trainer's handlers
        # must not outlive it.
        signal.signal(signal.SIGTERM, lambda *_: None)
        stops.install()
        assert stops.received == signal.SIGTERM
    finally:
        stops.restore()
    assert {s: signal.getsignal(s) for s in before} == before


def test_the_stop_says_what_to_do_and_exits_like_a_signalled_process():
    stop = StopRequested(signal.SIGTERM, "validation", "runs/x/checkpoints/last.ckpt")
    assert stop.exit_code == 143 and not stop.requeue
    assert str(stop) == "stopped by SIGTERM during validation; saved runs/x/checkpoints/last.ckpt"
    warned = StopRequested(signal.SIGUSR1, "test", requeue=True)
    assert warned.exit_code == 138 and warned.requeue
    assert str(warned) == "stopped by SIGUSR1 during test; the last resume point is kept"
