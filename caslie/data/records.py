"""Load MMECInstruct rows from the hub, local files or the shipped sample; validate them into Records.

Every row is checked against the data contract (DESIGN.md): JSON fields parse, the task is known, the
split maps to a canonical one, ``images`` has one entry per product, ``caption_info`` (when present)
matches ``images``, and the gold ``output`` is a valid answer. With ``on_error=raise`` the first bad
row stops the load with its location, id, field and problem; with ``skip`` bad rows are dropped,
counted by reason and reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from caslie.config import DataConfig
from caslie.errors import DataError, RowError, UnknownTaskError
from caslie.hub import require_hub
from caslie.record import Record
from caslie.tasks import Task, get_task, option_label

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
SAMPLE_ROWS = SAMPLE_DIR / "rows.jsonl"
ROW_SUFFIXES = (".jsonl", ".json", ".parquet")
REQUIRED_FIELDS = ("task", "split", "instruction", "input", "output", "images")
SCHEMA_FIELDS = REQUIRED_FIELDS + ("options", "caption_info", "setting", "id")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class LoadReport:
    """What a load kept and dropped."""

    source: str
    rows_read: int = 0
    kept: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    skip_examples: list[str] = field(default_factory=list)
    duplicate_ids: int = 0

    @property
    def n_skipped(self) -> int:
        """Rows dropped as invalid."""
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One paragraph for logs and the console."""
        kept = ", ".join(f"{t}/{s}={n}" for (t, s), n in sorted(self.kept.items()))
        text = f"{self.source}: read {self.rows_read} rows, kept {sum(self.kept.values())} ({kept})"
        if self.skipped:
            reasons = "; ".join(f"{n} x {r}" for r, n in self.skipped.most_common())
            text += f"; skipped {self.n_skipped} invalid rows ({reasons})"
        if self.duplicate_ids:
            text += f"; {self.duplicate_ids} rows repeat an earlier row's content (ids suffixed #k)"
        return text


# --------------------------------------------------------------------------------------------------
# Sources


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


def _iter_file(path: Path) -> Iterator[tuple[str, Any]]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    yield f"{path}:{lineno}", line
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json source must hold a list of rows")
        for i, row in enumerate(data):
            yield f"{path}[{i}]", row
    else:
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}[{i}]", row


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
        require_hub(str(where), "dataset", "set data.source to a local .json/.jsonl/.parquet")
        import datasets

        try:
            ds = datasets.load_dataset(str(where), split=hub_split)
        except Exception as err:  # the library raises many types; say which id failed
            raise DataError(f"cannot load dataset '{where}' (split '{hub_split}'): {err}") from err
        for i, row in enumerate(ds):
            yield f"{where}[{i}]", row


# --------------------------------------------------------------------------------------------------
# Validation


def content_id(row: dict[str, Any]) -> str:
    """A stable id from the row's content (for sources without an ``id`` column)."""
    parts = [row.get(k) for k in ("task", "split", "setting", "instruction", "input", "options")]
    parts += [row.get("output"), row.get("images")]
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.blake2b(blob.encode("utf-8"), digest_size=8).hexdigest()


def _json_field(row: dict, name: str, loc: str, rid: str, kinds: tuple[type, ...]) -> Any:
    value = row.get(name)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RowError(loc, rid, name, f"invalid JSON ({err.msg} at char {err.pos})") from None
    if not isinstance(value, kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise RowError(loc, rid, name, f"expected a JSON {want}, got {type(value).__name__}")
    return value


def _row_head(raw: Any, location: str, required: tuple[str, ...]) -> tuple[dict, str, Task]:
    """The row as a dict, its id (the source's, else a content hash) and its task, after checking
    that the ``required`` fields are present.

    Raises:
        RowError: not JSON, not an object, a missing field, or an unknown task.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as err:
            raise RowError(location, None, "<line>", f"not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise RowError(location, None, "<row>", f"expected an object, got {type(raw).__name__}")
    rid = str(raw["id"]) if raw.get("id") not in (None, "") else content_id(raw)
    for name in required:
        if raw.get(name) is None:
            raise RowError(location, rid, name, "missing")
    try:
        task = get_task(raw["task"])
    except UnknownTaskError as err:
        raise RowError(location, rid, "task", str(err)) from None
    return raw, rid, task


def _options_field(raw: dict, loc: str, rid: str) -> tuple[list[str] | None, bool]:
    """The parsed ``options`` list (``None`` when absent), and whether the field is the JSON text
    ``"null"`` (which the reference renders as an options block reading ``null``)."""
    value = raw.get("options")
    if value is None:
        return None, False
    if isinstance(value, str) and value.strip() == "null":
        return None, True
    options = _json_field(raw, "options", loc, rid, (list,))
    if not all(isinstance(o, str) for o in options):
        raise RowError(loc, rid, "options", "every option must be a string")
    return options, False


def _canonical_split(row: dict, loc: str, rid: str, split_map: dict[str, str]) -> str:
    split = row.get("split")
    if not isinstance(split, str) or not split:
        raise RowError(loc, rid, "split", f"expected a split name, got {split!r}")
    setting = row.get("setting")
    key = split if setting in (None, "", "IND", "ind") else f"{split}/{setting}"
    if key not in split_map:
        raise RowError(
            loc,
            rid,
            "split" if key == split else "setting",
            f"'{key}' is not in data.split_map (known: {', '.join(sorted(split_map))}); add it "
            f"there, e.g. data.split_map.{key.replace('/', '_')}=test_ood",
        )
    return split_map[key]


@dataclass(frozen=True)
class GoldRow:
    """What scoring a prediction needs of a row: its id, task, split, gold answer and options."""

    id: str
    task: str
    split: str
    output: str
    options: tuple[str, ...] | None
    location: str
    extras: dict[str, Any] = field(default_factory=dict, compare=False)
    """Columns outside the schema (the synthetic rows' ``caption_dependent`` flag, for one)."""


def parse_gold_row(raw: Any, location: str, split_map: dict[str, str]) -> GoldRow:
    """Validate only ``task``, ``split`` (and ``setting``), ``output`` and ``options`` of a raw row:
    a row whose images or captions are incomplete can still be scored.

    Raises:
        RowError: naming the location, row id, field and problem.
    """
    raw, rid, task = _row_head(raw, location, ("task", "split", "output"))
    output = raw["output"]
    if not isinstance(output, str) or not output.strip():
        raise RowError(location, rid, "output", f"expected a non-empty string, got {output!r}")
    options, _ = _options_field(raw, location, rid)
    split = _canonical_split(raw, location, rid, split_map)
    extras = {k: v for k, v in raw.items() if k not in SCHEMA_FIELDS}
    return GoldRow(rid, task.code, split, output, tuple(options) if options is not None else None,
                   location, extras)  # fmt: skip


def load_gold_rows(
    source: str, split_map: dict[str, str], hub_split: str = "train"
) -> list[GoldRow]:
    """Every row of ``source`` as a :class:`GoldRow`, with the ids :func:`load_records` gives them
    (a repeated row's id gets ``#k``), in source order.

    Raises:
        RowError: the first invalid row.
        DataError: an unreadable source.
    """
    seen: Counter = Counter()
    rows = []
    for location, raw in iter_raw_rows(source, hub_split):
        row = parse_gold_row(raw, location, split_map)
        seen[row.id] += 1
        if seen[row.id] > 1:
            row = replace(row, id=f"{row.id}#{seen[row.id]}")
        rows.append(row)
    if not rows:
        raise DataError(f"{source} holds no rows")
    return rows


def parse_row(raw: Any, location: str, split_map: dict[str, str]) -> Record:
    """Validate one raw row (a dict, or a JSON line) into a :class:`Record`.

    Raises:
        RowError: naming the location, row id, field and problem.
    """
    raw, rid, task = _row_head(raw, location, REQUIRED_FIELDS)
    split = _canonical_split(raw, location, rid, split_map)
    instruction, output = raw["instruction"], raw["output"]
    for name, value in (("instruction", instruction), ("output", output)):
        if not isinstance(value, str) or not value.strip():
            raise RowError(location, rid, name, f"expected a non-empty string, got {value!r}")

    inp = _json_field(raw, "input", location, rid, (list,) if task.code == "sr" else (dict,))
    if task.code == "sr" and not all(isinstance(x, str) for x in inp):
        raise RowError(location, rid, "input", "sr history items must all be strings")
    options, null_options = _options_field(raw, location, rid)
    images = _json_field(raw, "images", location, rid, (list,))
    if not all(isinstance(i, str) and i for i in images):
        raise RowError(location, rid, "images", "every image entry must be a non-empty string")
    expected = task.image_count(inp, options)
    if len(images) != expected:
        raise RowError(
            location,
            rid,
            "images",
            f"{len(images)} image(s) for {expected} product(s) of task {task.code}",
        )
    captions = None
    if raw.get("caption_info") is not None:
        captions = _json_field(raw, "caption_info", location, rid, (list,))
        if len(captions) != len(images):
            raise RowError(
                location,
                rid,
                "caption_info",
                f"{len(captions)} caption(s) for {len(images)} images",
            )
        if not all(c is None or isinstance(c, str) for c in captions):
            raise RowError(location, rid, "caption_info", "captions must be strings or null")

    if options:
        valid = {option_label(o) for o in options} | set(options)
        if output not in valid:
            shown = ", ".join(option_label(o) for o in options)
            raise RowError(
                location, rid, "output", f"'{output}' is not among the options ({shown})"
            )
    elif task.fixed_labels:
        if output not in task.fixed_labels:
            raise RowError(
                location, rid, "output", f"'{output}' is not one of {', '.join(task.fixed_labels)}"
            )
    else:
        raise RowError(location, rid, "options", f"task {task.code} needs a non-empty options list")

    extras = {k: v for k, v in raw.items() if k not in SCHEMA_FIELDS}
    return Record(
        id=rid,
        task=task.code,
        split=split,
        instruction=instruction,
        input=inp,
        options=tuple(options) if options is not None else None,
        output=output,
        images=tuple(images),
        captions=tuple(captions) if captions is not None else None,
        location=location,
        null_options=null_options,
        extras=extras,
    )


# --------------------------------------------------------------------------------------------------
# Loading with selection


def validate_rows(
    rows: Iterable[tuple[str, Any]],
    split_map: dict[str, str],
    on_error: str,
    report: LoadReport,
) -> Iterator[Record]:
    """Validate rows, raising or skipping (counted) on bad ones; duplicate ids get ``#k``."""
    seen: Counter = Counter()
    for location, raw in rows:
        report.rows_read += 1
        try:
            record = parse_row(raw, location, split_map)
        except RowError as err:
            if on_error == "raise":
                raise
            report.skipped[f"{err.field}: {err.problem.split(' (')[0]}"] += 1
            if len(report.skip_examples) < 5:
                report.skip_examples.append(str(err))
            continue
        seen[record.id] += 1
        if seen[record.id] > 1:
            report.duplicate_ids += 1
            record = replace(record, id=f"{record.id}#{seen[record.id]}")
        yield record


def load_records(
    cfg: DataConfig,
    splits: Iterable[str] | None = None,
    tasks: Iterable[str] | None = None,
) -> tuple[list[Record], LoadReport]:
    """Load, validate and select rows.

    Args:
        cfg: The data config (source, split map, on_error, row limit).
        splits: Canonical splits to keep (default: the train split and the eval splits).
        tasks: Task codes to keep (default: ``cfg.tasks``).

    Returns:
        The kept records (source order) and the load report.

    Raises:
        RowError: an invalid row under ``on_error=raise``.
        DataError: an unreadable source, or nothing left after selection.
    """
    want_splits = set(splits) if splits is not None else {cfg.train_split, *cfg.eval_splits}
    want_tasks = set(tasks) if tasks is not None else set(cfg.tasks)
    report = LoadReport(source=cfg.source)
    kept: list[Record] = []
    seen_pairs: Counter = Counter()
    raw_rows = iter_raw_rows(cfg.source, cfg.hub_split)
    for record in validate_rows(raw_rows, dict(cfg.split_map), cfg.on_error, report):
        seen_pairs[(record.task, record.split)] += 1
        if record.task not in want_tasks or record.split not in want_splits:
            continue
        if (
            cfg.max_rows_per_task
            and report.kept[(record.task, record.split)] >= cfg.max_rows_per_task
        ):
            continue
        report.kept[(record.task, record.split)] += 1
        kept.append(record)
    if report.skipped:
        log.warning("skipped %d invalid rows: %s", report.n_skipped, report.summary())
    if not kept:
        have = ", ".join(f"{t}/{s}" for t, s in sorted(seen_pairs)) or "no valid rows at all"
        raise DataError(
            f"nothing left after filters in {cfg.source}: wanted tasks {sorted(want_tasks)} and "
            f"splits {sorted(want_splits)}; the source has {have}"
        )
    return kept, report
