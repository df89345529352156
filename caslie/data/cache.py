"""Caption and vote caches: append-only JSONL shards, safe to kill, safe for many writers.

A cache is a folder of ``*.jsonl`` shards. Every writer (one per rank and process) opens a shard of
its own with a unique name, so writers never share a file, and appends one whole JSON line per
entry, flushed at once. Readers merge all shards. A writer killed mid-write leaves at most one torn
last line in its own shard; readers ignore it with a warning. Entries are keyed by content: row id,
image index, model or voter, prompt-template hash (and for votes, the hash of the judged caption).

Layout::

    <captions>/<shard>.jsonl            {"row_id", "image_index", "model", "template", "caption",
                                         "status": "ok"|"failed", "reason", "ts"}
    <votes>/<voter>/<shard>.jsonl       {"row_id", "image_index", "voter", "caption_sha", "vote":
                                         "yes"|"no", "p_yes", "template", "ts"}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from caslie.errors import CacheError

log = logging.getLogger(__name__)


def text_hash(text: str) -> str:
    """Short content hash of a prompt template or caption (16 hex chars)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


class ShardWriter:
    """Appends entries to a new shard file; use as a context manager."""

    def __init__(self, folder: str | Path, rank: int = 0, fsync_every: int = 256):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"r{rank:04d}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.path = self.folder / name
        self._fh = self.path.open("a", encoding="utf-8")
        self._fsync_every = fsync_every
        self._since_sync = 0

    def write(self, entry: dict[str, Any]) -> None:
        """Append one entry as a single line, flushed to the OS immediately."""
        entry.setdefault("ts", time.time())
        self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._fh.flush()
        self._since_sync += 1
        if self._since_sync >= self._fsync_every:
            os.fsync(self._fh.fileno())
            self._since_sync = 0

    def close(self) -> None:
        """Flush to disk and close."""
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_shards(folder: str | Path) -> Iterator[dict[str, Any]]:
    """Yield every entry of every shard in ``folder`` (sorted by name, then line).

    A torn last line (no newline, or not JSON) is skipped with a warning: it is what a writer
    killed mid-write leaves. A bad line anywhere else means corruption and raises.

    Raises:
        CacheError: naming the shard and line of a corrupt entry.
    """
    for shard in sorted(Path(folder).glob("*.jsonl")):
        with shard.open("rb") as fh:
            lines = fh.read().split(b"\n")
        # split() leaves a final "" when the file ends with a newline; anything else is a tail
        # that was never finished.
        complete, tail = lines[:-1], lines[-1]
        for lineno, raw in enumerate(complete, 1):
            if not raw.strip():
                continue
            try:
                yield json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if lineno == len(complete) and not tail:
                    log.warning("ignoring a torn last line in %s:%d", shard, lineno)
                    continue
                raise CacheError(f"corrupt cache entry at {shard}:{lineno}") from None
        if tail.strip():
            log.warning("ignoring a torn last line in %s:%d (killed writer)", shard, len(lines))


def _newer(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Merge rule: a success beats a failure; otherwise the later entry wins."""
    if old is None:
        return True
    old_ok, new_ok = old.get("status", "ok") == "ok", new.get("status", "ok") == "ok"
    if old_ok != new_ok:
        return new_ok
    return float(new.get("ts", 0)) >= float(old.get("ts", 0))


class CaptionCache:
    """Captions keyed by (row id, image index), for one captioning model and template."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def writer(self, rank: int = 0) -> ShardWriter:
        """A new shard for this process."""
        return ShardWriter(self.folder, rank)

    def models(self) -> set[str]:
        """Captioning models present in the cache."""
        return {e["model"] for e in read_shards(self.folder)}

    def load(
        self, model: str | None = None, template: str | None = None
    ) -> dict[tuple[str, int], dict[str, Any]]:
        """Merged entries for one model (and template hash, if given).

        Raises:
            CacheError: the folder is missing, or ``model`` is ``None`` and several are cached.
        """
        if not self.folder.is_dir():
            raise CacheError(
                f"caption cache {self.folder} does not exist; fill it with `caslie caption` or "
                f"set data.captions=dataset"
            )
        entries = list(read_shards(self.folder))
        if model is None:
            found = {e["model"] for e in entries}
            if len(found) > 1:
                raise CacheError(
                    f"caption cache {self.folder} holds captions of several models "
                    f"({', '.join(sorted(found))}); pick one with data.caption_model"
                )
        merged: dict[tuple[str, int], dict[str, Any]] = {}
        for entry in entries:
            if model is not None and entry["model"] != model:
                continue
            if template is not None and entry.get("template") != template:
                continue
            key = (str(entry["row_id"]), int(entry["image_index"]))
            if _newer(merged.get(key), entry):
                merged[key] = entry
        return merged


class VoteCache:
    """CQE votes, one subfolder per voter, keyed by (row id, image index, caption hash)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def writer(self, voter: str, rank: int = 0) -> ShardWriter:
        """A new shard for ``voter`` in this process."""
        return ShardWriter(self.folder / voter, rank)

    def voters(self) -> list[str]:
        """Voters that have a folder in the cache."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.is_dir())

    def load(self, voter: str) -> dict[tuple[str, int, str], dict[str, Any]]:
        """Merged votes of one voter (empty when the voter has none)."""
        merged: dict[tuple[str, int, str], dict[str, Any]] = {}
        folder = self.folder / voter
        if not folder.is_dir():
            return merged
        for entry in read_shards(folder):
            key = (str(entry["row_id"]), int(entry["image_index"]), str(entry["caption_sha"]))
            if _newer(merged.get(key), entry):
                merged[key] = entry
        return merged


def folder_state(folder: str | Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime) of every shard below ``folder``: a cheap change detector."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*.jsonl")
    )
