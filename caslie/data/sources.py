"""Where rows come from: the shipped sample, a local .json/.jsonl/.parquet file or folder, or a hub
dataset, read as ``(location, raw row)`` pairs.

Files are read defensively: a .jsonl line is decoded on its own, so a bad byte names its line and
loses only that row (an :class:`UnreadableRow`); a file in another format than its name says, or
one that cannot be read at all, is one :class:`~caslie.errors.DataError` naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caslie.errors import DataError
from caslie.hub import Wanted, first_line, require_hub, unavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
SAMPLE_ROWS = SAMPLE_DIR / "rows.jsonl"
ROW_SUFFIXES = (".jsonl", ".json", ".parquet")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
PARQUET_MAGIC = b"PAR1"
"""How a parquet file starts (so one named .jsonl or .json is told apart)."""


def resolve_source(source: str) -> tuple[str, Path | str]:
    """Classify ``data.source``.

    Returns:
        ``("file", path)``, ``("folder", path)`` or ``("hub", repo_id)``.
    """
    if source == "sample":
        return "file", SAMPLE_ROWS
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix not in ROW_SUFFIXES:
            raise DataError(f"data.source file {path} must be .json, .jsonl or .parquet")
        return "file", path
    if path.is_dir():
        return "folder", path
    if _HUB_ID.match(source) and not source.startswith((".", "/")):
        return "hub", source
    raise DataError(
        f"data.source '{source}' is neither an existing file or folder nor a hub id (owner/name)"
    )


def default_image_root(source: str) -> Path:
    """Folder that relative image paths resolve against when ``data.image_root`` is unset."""
    kind, where = resolve_source(source)
    if kind == "hub":
        return Path.cwd()
    path = Path(where)
    return path if kind == "folder" else path.parent


@dataclass(frozen=True)
class UnreadableRow:
    """A row the source holds but that cannot be read as text (bad bytes on a JSON line)."""

    problem: str


def _not_utf8(data: bytes, start: int, what: str) -> str:
    """The problem of ``data`` failing to decode at byte ``start``."""
    return f"{what} is not UTF-8 (byte 0x{data[start]:02x} at byte {start}); re-save it as UTF-8"


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror or err})") from None


def _refuse_parquet_bytes(path: Path, head: bytes) -> None:
    if head.startswith(PARQUET_MAGIC):
        raise DataError(
            f"{path}: holds parquet data, not JSON; rename it to {path.with_suffix('.parquet').name}"
        )


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """Each non-blank line, decoded on its own, so a bad byte names its line (and only that line
    is lost under ``on_error=skip``)."""
    try:
        fh = path.open("rb")
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror or err})") from None
    with fh:
        _refuse_parquet_bytes(path, fh.read(len(PARQUET_MAGIC)))
        fh.seek(0)
        for lineno, data in enumerate(fh, 1):
            try:  # a byte-order mark can only open the file
                line = data.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield f"{path}:{lineno}", UnreadableRow(_not_utf8(data, err.start, "the line"))
                continue
            if line.strip():
                yield f"{path}:{lineno}", line


def _iter_json(path: Path) -> Iterator[tuple[str, Any]]:
    data = _read_bytes(path)
    _refuse_parquet_bytes(path, data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: {_not_utf8(data, err.start, 'the file')}") from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno})"
        ) from None
    except (ValueError, RecursionError) as err:  # a number too long, nesting too deep
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if isinstance(rows, dict) and isinstance(rows.get("data"), list):
        rows = rows["data"]
    if not isinstance(rows, list):
        raise DataError(
            f"{path}: a .json source must hold a list of rows, got {type(rows).__name__}"
        )
    for i, row in enumerate(rows):
        yield f"{path}[{i}]", row


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError, TypeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: not a readable parquet file ({first})") from None
    for i, row in enumerate(rows):
        yield f"{path}[{i}]", row


def _iter_file(path: Path) -> Iterator[tuple[str, Any]]:
    if path.suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif path.suffix == ".json":
        yield from _iter_json(path)
    else:
        yield from _iter_parquet(path)


def iter_raw_rows(source: str, hub_split: str = "train") -> Iterator[tuple[str, Any]]:
    """Yield ``(location, row)`` from a source; a .jsonl row is still its unparsed line."""
    kind, where = resolve_source(source)
    if kind == "file":
        yield from _iter_file(Path(where))
    elif kind == "folder":
        files = sorted(p for p in Path(where).iterdir() if p.suffix in ROW_SUFFIXES)
        if not files:
            raise DataError(f"data.source folder {where} holds no .json, .jsonl or .parquet file")
        for path in files:
            yield from _iter_file(path)
    else:
        wanted = Wanted(str(where), "dataset", repo_type="dataset",
                        alternative="set data.source to a local .json/.jsonl/.parquet")  # fmt: skip
        require_hub(wanted)
        import datasets

        try:
            ds = datasets.load_dataset(str(where), split=hub_split)
        except Exception as err:  # the library raises many types; say which id failed
            missing = unavailable(err, wanted)
            if missing is not None:
                raise missing from None
            raise DataError(
                f"cannot load dataset '{where}' (split '{hub_split}'): {first_line(err)}"
            ) from None
        for i, row in enumerate(ds):
            yield f"{where}[{i}]", row
