"""One training process per run folder: an exclusive lock on ``<run>/.lock``.

Two ``train.py`` on one run folder (a second copy started by hand, or a SLURM requeue while the
old job still runs) would overwrite each other's checkpoints. The launching process of a run takes
an ``fcntl.flock`` on ``<run>/.lock`` and holds it until the run returns. The kernel drops the lock
when the process dies, however it dies (``kill -9`` included), so a lock is never stale and there
is nothing to clean up. The file holds who took it (host, pid, start time), for the message a
second process gets.

Limitations: ``flock`` is as good as the filesystem under the run folder. On a local disk and on
NFS (Linux clients since 2.6.12 map it to NFS byte-range locks; NFSv3 needs ``lockd``) it holds
across processes and nodes. A filesystem without lock support (``ENOLCK``/``EOPNOTSUPP``: some
Lustre or CIFS mounts, NFS mounted ``nolock``) cannot be locked: the run then goes on unlocked,
with a warning; one mounted ``local_lock=flock`` locks only within one node.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from caslie.errors import CaslieError, ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
"""The lock's name inside the run folder (kept by ``run.overwrite``: it is not a run output)."""

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK")
"""What launchers set in every process of a distributed job (torchrun, Lightning, srun, by hand)."""

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
"""``flock`` errors of a filesystem that has no locks at all (as opposed to a lock held)."""


class RunLockedError(CaslieError, RuntimeError):
    """The run folder is locked by another live process."""


def is_launching_process(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process started the job: every rank variable is unset or ``0``.

    Under DDP every rank runs ``train.py``; only the process that started the job locks the run
    folder, so the ranks it starts (or the ranks on other nodes) never refuse their own job.
    """
    return all(environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


class RunLock:
    """The exclusive lock on a run folder, as a context manager.

    Args:
        run_dir: The run folder (created if missing).
        environ: Where the rank variables are read (see :func:`is_launching_process`); a rank
            other than the launching one takes no lock.

    Raises:
        RunLockedError: another process holds the lock (the message names its pid, host and
            start time).
        ConfigError: the run folder cannot be created or written.
    """

    def __init__(self, run_dir: str | Path, environ: Mapping[str, str] = os.environ):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.environ = environ
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock (a no-op on a rank other than the launching one)."""
        if self.held or not is_launching_process(self.environ):
            return self
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(self._in_use_message()) from None
        except OSError as err:
            os.close(fd)
            if err.errno not in _UNSUPPORTED:
                raise ConfigError(
                    f"cannot lock run folder {self.run_dir}: {err.strerror}"
                ) from None
            log.warning("the filesystem of %s has no file locks (%s): this run folder is not "
                        "protected against a second train.py", self.run_dir, err.strerror)  # fmt: skip
            return self
        self._fd = fd
        self._write_holder()
        return self

    def release(self) -> None:
        """Drop the lock (closing the file drops it; the file stays for the next holder)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:  # fmt: skip
        self.release()

    def _open(self) -> int:
        """The lock file, opened without truncating it (a holder's note must survive a refusal)."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise ConfigError(
                f"run folder {self.run_dir} cannot be written ({err.strerror}); check its "
                f"permissions or choose another run.output_dir"
            ) from None

    def _write_holder(self) -> None:
        """Record who holds the lock; only the holder writes, so a reader sees the holder's note."""
        assert self._fd is not None
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        note = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": stamp})
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (note + "\n").encode(), 0)

    def _in_use_message(self) -> str:
        holder = read_holder(self.path)
        return (
            f"run folder {self.run_dir} is in use by pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')} since {holder.get('since', '?')}; wait for it to end, "
            f"or choose another run.name"
        )


def read_holder(path: str | Path, attempts: int = 5) -> dict:
    """The holder's note in a lock file (``host``, ``pid``, ``since``), or ``{}`` when unreadable.

    A holder writes its note just after taking the lock, so a reader that comes in between sees
    an empty file: it looks again a few times, 20 ms apart.
    """
    for attempt in range(attempts):
        try:
            note = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            note = None
        if isinstance(note, dict):
            return note
        if attempt + 1 < attempts:
            time.sleep(0.02)
    return {}
