"""How the fault-injection tests damage files and stop processes.

Each damage is what a real failure leaves: a copy cut short (a full disk, a kill in the middle of a
plain write), bytes flipped (a bad disk or a bad transfer), an empty file (a crash after ``open``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def truncate_half(path: Path) -> None:
    """Cut the file to half its size (mid-line, mid-record)."""
    os.truncate(path, path.stat().st_size // 2)


def flip_bytes(path: Path, at: int | None = None, count: int = 8) -> None:
    """Invert ``count`` bytes from offset ``at`` (default: the middle of the file)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if at is None else at
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def empty(path: Path) -> None:
    """Leave the file in place with nothing in it."""
    path.write_bytes(b"")


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated": truncate_half, "flipped": flip_bytes, "empty": empty,
}  # fmt: skip
"""The three damages every written file is put through, by name (the test ids)."""


def flip_line_start(path: Path, line: int) -> None:
    """Invert the first byte of 1-based ``line``: the line is no JSON any more, and every other
    line is intact (a flip that lands inside a string can leave valid JSON that no reader could
    tell from the real thing)."""
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = bytes([lines[line - 1][0] ^ 0xFF]) + lines[line - 1][1:]
    path.write_bytes(b"\n".join(lines))


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 180) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; ``False`` when it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            break
        time.sleep(0.02)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive


def line_count(folder: Path) -> int:
    """Newlines in every ``*.jsonl`` below ``folder`` (the entries written so far)."""
    if not folder.is_dir():
        return 0
    total = 0
    for path in folder.rglob("*.jsonl"):
        try:
            total += path.read_bytes().count(b"\n")
        except FileNotFoundError:  # a shard being renamed by a repair
            continue
    return total


def one_line_error(stderr: str, program: str) -> str:
    """The message of a one-line ``<program>: error: ...`` (asserting that is all there is)."""
    lines = [x for x in stderr.strip().splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith(f"{program}: error: ")]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]
