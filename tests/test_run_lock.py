"""The run-folder lock: one holder at a time, released by any death, refused in one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from caslie.errors import CaslieError, ConfigError
from caslie.run_lock import LOCK_FILE, RunLock, RunLockedError, is_launching_process, read_holder

REPO = Path(__file__).resolve().parents[1]

HOLD = (
    "import sys, time\n"
    "from caslie.run_lock import RunLock\n"
    "RunLock(sys.argv[1]).acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)
"""A process that takes the lock of the folder it is given and keeps it until it is killed."""


def start_holder(run_dir: Path) -> subprocess.Popen:
    """A process holding ``run_dir``'s lock (it has written its note when this returns)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "RANK": "0"})  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_with_the_holders_pid_and_host_until_it_is_killed(tmp_path):
    run_dir = tmp_path / "run"
    holder = start_holder(run_dir)
    try:
        with pytest.raises(RunLockedError) as refused:
            RunLock(run_dir).acquire()
        message = str(refused.value)
        assert isinstance(refused.value, CaslieError) and "\n" not in message
        assert (
            f"run folder {run_dir} is in use by pid {holder.pid} on host {socket.gethostname()} since 20"
            in message
        )
        assert read_holder(run_dir / LOCK_FILE)["pid"] == holder.pid  # a refusal keeps the note
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(run_dir) as lock:  # kill -9 left no stale lock
        assert lock.held and read_holder(run_dir / LOCK_FILE)["pid"] == os.getpid()
    assert not lock.held


def test_a_released_lock_can_be_taken_again_and_one_process_cannot_take_it_twice(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()} "):
        RunLock(tmp_path).acquire()  # a second open of the file: flock tells them apart
    first.release()
    RunLock(tmp_path).acquire().release()


@pytest.mark.parametrize(
    ("environ", "launching"),
    [({}, True), ({"RANK": "0", "LOCAL_RANK": "0"}, True), ({"LOCAL_RANK": "1"}, False),
     ({"RANK": "3"}, False), ({"SLURM_PROCID": "2"}, False), ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False)],
)  # fmt: skip
def test_only_the_launching_process_locks(tmp_path, environ, launching):
    assert is_launching_process(environ) is launching
    holder = RunLock(tmp_path).acquire()
    try:
        if launching:
            with pytest.raises(RunLockedError):
                RunLock(tmp_path, environ).acquire()
        else:
            assert not RunLock(tmp_path, environ).acquire().held  # a rank of the holder's job
    finally:
        holder.release()


def test_a_run_folder_that_cannot_be_created_is_one_config_error(tmp_path):
    (tmp_path / "runs").write_text("a file where the runs should go")
    with pytest.raises(ConfigError, match=r"run folder .*runs/x cannot be written \(") as err:
        RunLock(tmp_path / "runs" / "x").acquire()
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.integration
def test_two_train_py_on_one_run_folder_one_refuses_in_one_line_the_other_finishes(tmp_path):
    # Both start at once: whichever takes the lock trains, the other is refused naming it.
    cmd = [sys.executable, "train.py", "--config", "configs/demo.yaml", f"run.output_dir={tmp_path / 'runs'}",
           f"data.cache_dir={tmp_path / 'cache'}", f"data.votes={REPO / 'data/sample/votes'}",
           "data.tasks=sa", "data.eval_splits=[val]", "trainer.max_epochs=1", "logger.wandb.mode=disabled",
           "trainer.enable_progress_bar=false"]  # fmt: skip
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-2000:] for o in outs]
    loser = next(i for i, p in enumerate(procs) if p.returncode == 2)
    winner = procs[1 - loser]
    stderr = outs[loser][1].strip()
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith(f"train.py: error: run folder {tmp_path / 'runs' / 'demo'} is in use ")
    assert f"by pid {winner.pid} on host {socket.gethostname()} since " in stderr
    assert (tmp_path / "runs" / "demo" / "metrics.json").is_file()
    assert read_holder(tmp_path / "runs" / "demo" / LOCK_FILE)["pid"] == winner.pid
    RunLock(tmp_path / "runs" / "demo").acquire().release()
