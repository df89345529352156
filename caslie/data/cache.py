"""Caption and vote caches: append-only JSONL shards, safe to kill, safe for many writers.

A cache is a folder of ``*.jsonl`` shards. Every writer (one per rank and process) opens a shard of
its own with a unique name, so writers never share a file, and appends one whole JSON line per
entry, flushed at once. Readers merge all shards. A writer killed mid-write leaves at most one torn
last line in its own shard; readers ignore it with a warning. Entries are keyed by content: row id,
image index, model or voter, prompt-template hash; a caption also records the image it was made
from (reference, content hash), a vote the judged caption's hash and what cast it (the voter's
checkpoint revision, mode and prompt template). A changed input is recomputed, never reused.

Layout::

    <captions>/<shard>.jsonl            {"row_id", "image_index", "model", "template", "caption",
                                         "status": "ok"|"failed", "reason", "image", "image_sha",
                                         "image_size", "image_mtime_ns", "ts"}
    <votes>/<voter>/<shard>.jsonl       {"row_id", "image_index", "voter", "caption_sha", "vote":
                                         "yes"|"no", "p_yes", "template", "mode", "checkpoint", "ts"}
"""

from __future__ import annotations

import codecs
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

from caslie.errors import CacheError, MissingPathError

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


CAPTION_FIELDS: dict[str, tuple[type, ...]] = {
    "row_id": (str, int), "image_index": (int,), "model": (str,), "caption": (str,),
}  # fmt: skip
"""Fields every caption entry holds, with their types."""
VOTE_FIELDS: dict[str, tuple[type, ...]] = {
    "row_id": (str, int), "image_index": (int,), "caption_sha": (str,), "vote": (str,),
}  # fmt: skip
"""Fields every vote entry holds, with their types."""
ON_ERROR = ("raise", "skip")
"""What a reader does with a corrupt entry: stop naming it, or drop it with a warning."""


def _problem(entry: Any, fields: dict[str, tuple[type, ...]]) -> str | None:
    """Why a parsed line is not an entry, or ``None`` when it is one."""
    # Fast path for the usual entry: JSON values have exact types, so a field whose type is one
    # of its kinds is valid (a bool, an int subclass, is not among them and takes the full check).
    if type(entry) is dict:
        for name, kinds in fields.items():
            if type(entry.get(name)) not in kinds:
                break
        else:
            return None
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    for name, kinds in fields.items():
        value = entry.get(name)
        if value is None:
            return f"no '{name}'"
        if not isinstance(value, kinds) or isinstance(value, bool):
            return f"'{name}' is a {type(value).__name__}"
    return None


_BLANK = " \t\n\r\x0b\x0c"
"""What ``bytes.strip()`` strips: a decoded line is blank exactly when its bytes are."""


def _as_text(data: bytes) -> str | None:
    """``data`` decoded as ``json.loads`` decodes each of its lines when given bytes (UTF-8,
    surrogates passed), or ``None`` where a line could decode otherwise (a NUL byte or a BOM
    make ``json.loads`` guess UTF-16, UTF-32 or UTF-8-sig) or not at all: then lines are left
    to ``json.loads`` one by one, as bytes."""
    if b"\x00" in data or codecs.BOM_UTF8 in data:
        return None
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None


_scan_once = json.JSONDecoder().scan_once


def _loads_line(line: str) -> Any:
    """``json.loads(line)`` for a decoded line without a BOM, by one call of the decoder's scanner
    when the line is one JSON value with nothing around it (a line as writers write it); any other
    line, valid or not, goes to ``json.loads`` itself, so results and errors are the same."""
    try:
        value, end = _scan_once(line, 0)
    except Exception:  # noqa: BLE001 - json.loads below raises the error that counts
        return json.loads(line)
    return value if end == len(line) else json.loads(line)


def _shard_lines(shard: Path, fields: dict[str, tuple[type, ...]]):
    """``(line number, entry or None, problem or None)`` for every non-blank line of a shard; a
    torn last line (what a writer killed mid-write leaves) is left out with a warning."""
    with shard.open("rb") as fh:
        data = fh.read()
    text = _as_text(data)  # decoded once, not line by line in json.loads
    lines: list[bytes] | list[str] = data.split(b"\n") if text is None else text.split("\n")
    # split() leaves a final "" when the file ends with a newline; anything else is a tail that
    # was never finished.
    complete, tail = lines[:-1], lines[-1]
    blank = _BLANK if text is not None else None
    for lineno, raw in enumerate(complete, 1):
        if (not raw or raw[:1].isspace()) and not raw.strip(blank):  # most lines open with "{"
            continue
        try:
            entry = _loads_line(raw) if text is not None else json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            if lineno == len(complete) and not tail:
                log.warning("ignoring a torn last line in %s:%d", shard, lineno)
                continue
            yield lineno, None, "not a JSON line"
            continue
        problem = _problem(entry, fields)
        yield lineno, (None if problem else entry), problem
    if tail.strip(blank):
        log.warning("ignoring a torn last line in %s:%d (killed writer)", shard, len(lines))


def read_shards(folder: str | Path, fields: dict[str, tuple[type, ...]] | None = None,
                on_error: str = "raise") -> Iterator[dict[str, Any]]:  # fmt: skip
    """Yield every entry of every shard in ``folder`` (sorted by name, then line).

    Args:
        folder: The cache folder (or a voter's subfolder).
        fields: Fields each entry must hold (``CAPTION_FIELDS``, ``VOTE_FIELDS``); ``None``: any
            JSON object.
        on_error: ``raise`` on a corrupt entry, or ``skip`` it (counted in one warning).

    Raises:
        CacheError: naming the shard, line and problem of a corrupt entry (``on_error=raise``).
    """
    skipped: list[str] = []
    for shard in sorted(Path(folder).glob("*.jsonl")):
        for lineno, entry, problem in _shard_lines(shard, fields or {}):
            if entry is not None:
                yield entry
            elif on_error == "skip":
                skipped.append(f"{shard}:{lineno}")
            else:
                raise CacheError(
                    f"corrupt cache entry at {shard}:{lineno} ({problem}); drop such lines with "
                    f"`caslie repair {folder}` (they are kept aside in rejected/), or read past "
                    f"them with data.on_error=skip"
                )
    if skipped:
        log.warning("skipped %d corrupt cache entries (first: %s)", len(skipped), skipped[0])


def repair_shards_here(folder: Path, fields: dict[str, tuple[type, ...]]) -> list[str]:
    """Rewrite every shard of ``folder`` without its corrupt lines, which are moved (not lost) to
    ``<folder>/rejected/<shard>``. Run it with no writer at work on the folder.

    Returns:
        ``shard:line`` of every line moved aside.
    """
    moved: list[str] = []
    for shard in sorted(folder.glob("*.jsonl")):
        raw = shard.read_bytes().split(b"\n")
        bad = {n for n, entry, _ in _shard_lines(shard, fields) if entry is None}
        if not bad:
            continue
        rejected = folder / "rejected" / shard.name
        rejected.parent.mkdir(exist_ok=True)
        with rejected.open("ab") as fh:
            fh.writelines(raw[n - 1] + b"\n" for n in sorted(bad))
        kept = [line for n, line in enumerate(raw, 1) if n not in bad]
        tmp = shard.with_name(shard.name + ".tmp")
        tmp.write_bytes(b"\n".join(kept))
        os.replace(tmp, shard)
        moved += [f"{shard}:{n}" for n in sorted(bad)]
    return moved


def _fields_of(folder: Path) -> dict[str, tuple[type, ...]]:
    """Whether a folder's shards hold votes or captions, by what most of their lines hold (a
    voter's subfolder may be named as well as the cache)."""
    votes = captions = 0
    for shard in folder.glob("*.jsonl"):
        for raw in shard.read_bytes().split(b"\n"):
            try:
                entry = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(entry, dict):
                votes += "caption_sha" in entry or "vote" in entry
                captions += "model" in entry or "caption" in entry
    return VOTE_FIELDS if votes > captions else CAPTION_FIELDS


def repair_cache(folder: str | Path) -> list[str]:
    """:func:`repair_shards_here` on a caption cache (shards at the top), a vote cache (a
    subfolder of shards per voter) or one voter's subfolder, each folder checked against the fields
    of what it holds.

    Raises:
        MissingPathError: ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise MissingPathError(f"cache folder {root} does not exist")
    moved = repair_shards_here(root, _fields_of(root))
    for voter in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "rejected"):
        moved += repair_shards_here(voter, VOTE_FIELDS)
    return moved


def _newer(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Merge rule: a success beats a failure; otherwise the later entry wins."""
    if old is None:
        return True
    old_ok, new_ok = old.get("status", "ok") == "ok", new.get("status", "ok") == "ok"
    if old_ok != new_ok:
        return new_ok
    return float(new.get("ts", 0)) >= float(old.get("ts", 0))


def _blake(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _local_image(ref: str, root: Path) -> Path | None:
    """The file a local image reference names under ``root``, or ``None`` for a URL or a path
    that leaves the root (such a reference is never read here)."""
    if "://" in ref or ref.startswith("file:"):
        return None
    root = root.resolve()
    path = (root / ref).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def image_state(ref: str, root: Path, data: bytes | None = None) -> dict[str, Any]:
    """What identifies the image a caption was made from: the reference, and for a local file its
    content hash with the size and modification time that make re-checking it cheap. A URL is
    known by its text and the hash of the bytes fetched (``data``)."""
    state: dict[str, Any] = {"image": ref}
    path = _local_image(ref, root)
    if path is not None:
        stat = path.stat()
        state |= {"image_size": stat.st_size, "image_mtime_ns": stat.st_mtime_ns,
                  "image_sha": _blake(path.read_bytes() if data is None else data)}  # fmt: skip
    elif data is not None:
        state["image_sha"] = _blake(data)
    return state


def same_image(entry: dict[str, Any], ref: str, root: Path) -> bool:
    """Whether a cache entry was made from the image ``ref`` names now: the same reference and,
    for a local file, the same content (size and time first; the hash when they changed)."""
    if "image" in entry and entry["image"] != ref:
        return False
    if "image_sha" not in entry or "image_size" not in entry:
        return True  # a URL (or an entry of an older version): known by its reference only
    path = _local_image(ref, root)
    if path is None:
        return False  # the file is gone
    stat = path.stat()
    if (stat.st_size, stat.st_mtime_ns) == (entry["image_size"], entry.get("image_mtime_ns")):
        return True
    return stat.st_size == entry["image_size"] and _blake(path.read_bytes()) == entry["image_sha"]


class CaptionCache:
    """Captions keyed by (row id, image index), for one captioning model and template.

    Args:
        folder: The cache folder.
        on_error: ``raise`` on a corrupt entry or ``skip`` it (see :func:`read_shards`).
    """

    def __init__(self, folder: str | Path, on_error: str = "raise"):
        self.folder, self.on_error = Path(folder), on_error

    def writer(self, rank: int = 0) -> ShardWriter:
        """A new shard for this process."""
        return ShardWriter(self.folder, rank)

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every valid entry of every shard."""
        return read_shards(self.folder, CAPTION_FIELDS, self.on_error)

    def load(self, model: str | None = None, template: str | None = None,
             must_hold: bool = False) -> dict[tuple[str, int], dict[str, Any]]:  # fmt: skip
        """Merged entries for one model (and template hash, if given).

        Args:
            model: The captioning model (``None``: the only one in the cache).
            template: Keep only entries made with this prompt-template hash.
            must_hold: Refuse a ``model`` the cache has no caption of (a reader's typo), rather
                than return nothing (a writer about to add a model).

        Raises:
            CacheError: the folder is missing, ``model`` is not in it (``must_hold``), or
                ``model`` is ``None`` and several are cached.
        """
        if not self.folder.is_dir():
            raise CacheError(
                f"caption cache {self.folder} does not exist; fill it with `caslie caption` or "
                f"set data.captions=dataset"
            )
        entries = list(self.entries())
        found = {e["model"] for e in entries}
        if model is None and len(found) > 1:
            raise CacheError(
                f"caption cache {self.folder} holds captions of several models "
                f"({', '.join(sorted(found))}); pick one with data.caption_model"
            )
        if must_hold and model is not None and model not in found:
            raise CacheError(
                f"caption cache {self.folder} has no captions of data.caption_model '{model}' "
                f"(it has: {', '.join(sorted(found)) or 'none'})"
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
    """CQE votes, one subfolder per voter, keyed by (row id, image index, caption hash).

    Args:
        folder: The cache folder.
        on_error: ``raise`` on a corrupt entry or ``skip`` it (see :func:`read_shards`).
    """

    def __init__(self, folder: str | Path, on_error: str = "raise"):
        self.folder, self.on_error = Path(folder), on_error

    def writer(self, voter: str, rank: int = 0) -> ShardWriter:
        """A new shard for ``voter`` in this process."""
        return ShardWriter(self.folder / voter, rank)

    def voters(self) -> list[str]:
        """Voters that have a folder in the cache."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if p.is_dir())

    def load(self, voter: str, made_by: dict[str, str] | None = None
             ) -> dict[tuple[str, int, str], dict[str, Any]]:  # fmt: skip
        """Merged votes of one voter (empty when the voter has none).

        Args:
            voter: The voter's name (its subfolder).
            made_by: Keep only votes whose fields hold these values (``checkpoint``, ``mode``,
                ``template``...): the votes the current voter would cast.
        """
        merged: dict[tuple[str, int, str], dict[str, Any]] = {}
        folder = self.folder / voter
        if not folder.is_dir():
            return merged
        for entry in read_shards(folder, VOTE_FIELDS, self.on_error):
            if made_by and any(entry.get(k) != v for k, v in made_by.items()):
                continue
            key = (str(entry["row_id"]), int(entry["image_index"]), str(entry["caption_sha"]))
            old = merged.get(key)
            if old is None or _newer(old, entry):
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
