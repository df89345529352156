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
import shlex
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from caslie.config import DataConfig
from caslie.data.sources import UnreadableRow, iter_raw_rows
from caslie.errors import DataError, RowError, UnknownTaskError
from caslie.record import Record
from caslie.tasks import Task, get_task, option_label

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("task", "split", "instruction", "input", "output", "images")
SCHEMA_FIELDS = REQUIRED_FIELDS + ("options", "caption_info", "setting", "id")
MAX_DEPTH = 64
"""Deepest nesting of lists and objects a row may have: MMECInstruct's is 3; the limit keeps a
crafted row far below the interpreter's recursion limit wherever the row is parsed or serialised."""
SHOWN_SKIPS = 5
"""Dropped rows a warning or ``caslie inspect`` lists (all of them go to ``<run>/skipped.jsonl``)."""


@dataclass
class LoadReport:
    """What a load kept and dropped.

    Attributes:
        source: The ``data.source`` loaded.
        rows_read: Rows read from the source (valid or not).
        kept: Rows kept, by ``(task, split)``.
        skipped: Rows dropped as invalid, by reason.
        skipped_rows: Every dropped row: ``location``, ``file``, ``line`` (JSON lines) or ``row``
            (index in a .json, .parquet or hub split), ``id`` (when known), ``field`` and ``reason``.
        duplicate_ids: Rows without an ``id`` whose content repeats an earlier row's (their ids
            get ``#k``).
        overlap: Rows of an evaluation split whose content (task, instruction, input, options,
            output, images) is also a training row's, by ``(train split, evaluation split)``.
    """

    source: str
    rows_read: int = 0
    kept: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)
    duplicate_ids: int = 0
    overlap: Counter = field(default_factory=Counter)

    @property
    def n_skipped(self) -> int:
        """Rows dropped as invalid."""
        return sum(self.skipped.values())

    def skip(self, err: RowError) -> None:
        """Count a dropped row and keep where it is and why."""
        self.skipped[f"{err.field}: {err.problem.split(' (')[0]}"] += 1
        self.skipped_rows.append(skipped_row(err))

    def first_skipped(self, n: int = SHOWN_SKIPS) -> str:
        """The first ``n`` dropped rows, one indented ``location: field: problem`` per line."""
        lines = [
            f"  {row['location']}: {row['field']}: {row['reason']}" for row in self.skipped_rows[:n]
        ]
        more = len(self.skipped_rows) - len(lines)
        return "\n".join(lines + ([f"  ... and {more} more"] if more > 0 else []))

    def summary(self) -> str:
        """One paragraph for logs and the console."""
        kept = ", ".join(f"{t}/{s}={n}" for (t, s), n in sorted(self.kept.items()))
        text = f"{self.source}: read {self.rows_read} rows, kept {sum(self.kept.values())} ({kept})"
        if self.skipped:
            reasons = "; ".join(f"{n} x {r}" for r, n in self.skipped.most_common())
            text += f"; skipped {self.n_skipped} invalid rows ({reasons})"
        if self.duplicate_ids:
            text += (
                f"; {self.duplicate_ids} rows without an id repeat an earlier row's content "
                "(their ids are suffixed #k)"
            )
        if self.overlap:
            text += f"; {overlap_text(self.overlap)}"
        return text


_LINE_LOCATION = re.compile(r"^(?P<file>.*):(?P<line>\d+)$")
_INDEX_LOCATION = re.compile(r"^(?P<file>.*)\[(?P<row>\d+)\]$")


def skipped_row(err: RowError) -> dict[str, Any]:
    """A dropped row as one JSON object: ``location``, ``file``, ``line``, ``row``, ``id``,
    ``field``, ``reason`` (``line`` for JSON lines, ``row`` for an index; the other is ``None``)."""
    line = _LINE_LOCATION.match(err.location)
    index = _INDEX_LOCATION.match(err.location)
    found = line or index
    return {
        "location": err.location,
        "file": found["file"] if found else err.location,
        "line": int(line["line"]) if line else None,
        "row": int(index["row"]) if index else None,
        "id": err.row_id,
        "field": err.field,
        "reason": err.problem,
    }


def overlap_text(overlap: Counter) -> str:
    """``overlap`` (rows by ``(train split, evaluation split)``) in words."""
    pairs = ", ".join(f"{e} ~ {t}: {n}" for (t, e), n in sorted(overlap.items()))
    return (
        f"{sum(overlap.values())} evaluation rows repeat a training row's content ({pairs}); "
        "their scores measure recall of the training data"
    )


# --------------------------------------------------------------------------------------------------
# Validation


def content_id(row: dict[str, Any]) -> str:
    """A stable id from the row's content (for sources without an ``id`` column)."""
    parts = [row.get(k) for k in ("task", "split", "setting", "instruction", "input", "options")]
    parts += [row.get("output"), row.get("images")]
    return _hash(parts)


def _hash(parts: list[Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    # surrogatepass: a JSON "\ud800" escape is a lone surrogate, which strict UTF-8 cannot encode
    return hashlib.blake2b(blob.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def shown(value: Any, limit: int = 80) -> str:
    """``value`` for an error message: its repr (a newline in row text cannot break the one-line
    error), cut to ``limit`` characters (a field can hold megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _structure_problem(value: Any) -> str | None:
    """Why a parsed value cannot be used as row data (nesting deeper than :data:`MAX_DEPTH`, text
    that is not valid Unicode), or ``None``. Walks with a stack: never recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not _is_unicode(item):
                return "text holds a lone surrogate (an unpaired \\ud800-\\udfff escape)"
        elif isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                return f"nested more than {MAX_DEPTH} levels deep"
            parts = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((part, depth + 1) for part in parts)
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _loads(text: str) -> Any:
    """``json.loads`` that fails only with :class:`ValueError` (a 100,000-level nesting raises
    RecursionError; a 5,000-digit number a plain ValueError), and refuses values that
    :func:`_structure_problem` finds unusable."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg}, char {err.pos})") from None
    except RecursionError:
        raise ValueError("invalid JSON (nested too deeply to parse)") from None
    except ValueError as err:
        raise ValueError(f"invalid JSON ({err})") from None
    problem = None if _plainly_usable(text) else _structure_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _plainly_usable(text: str) -> bool:
    """Whether the value that ``text`` parses to passes :func:`_structure_problem` by the text
    alone: no ``\\u`` escape (the only way JSON text can spell a lone surrogate), no surrogate in
    the text itself, and too few brackets to nest past :data:`MAX_DEPTH`. Such text, almost every
    row's, skips walking the parsed value."""
    return (
        "\\u" not in text and text.count("[") + text.count("{") <= MAX_DEPTH and _is_unicode(text)
    )


def _json_field(row: dict, name: str, loc: str, rid: str, kinds: tuple[type, ...]) -> Any:
    value = row.get(name)
    if isinstance(value, str):
        try:
            value = _loads(value)
        except ValueError as err:
            raise RowError(loc, rid, name, str(err)) from None
    if not isinstance(value, kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise RowError(loc, rid, name, f"expected a JSON {want}, got {type(value).__name__}")
    return value


MAX_ID_LENGTH = 200
"""Longest explicit row id: ids name rows in messages, caches and prediction files."""


def _row_id(raw: dict, location: str) -> tuple[str, bool]:
    """The row's id and whether the source gave it (else it is a content hash).

    Raises:
        RowError: an ``id`` that is not a short, printable string or an integer.
    """
    value = raw.get("id")
    if value in (None, ""):
        return content_id(raw), False
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RowError(
            location, None, "id", f"expected a string or integer, got {type(value).__name__}"
        )
    rid = str(value)
    if len(rid) > MAX_ID_LENGTH or not rid.isprintable():
        raise RowError(location, None, "id", f"expected a short printable id, got {shown(rid)}")
    return rid, True


def _row_head(raw: Any, location: str, required: tuple[str, ...]) -> tuple[dict, str, bool, Task]:
    """The row as a dict, its id (the source's, else a content hash), whether the source gave the
    id, and its task, after checking that the ``required`` fields are present.

    Raises:
        RowError: unreadable text, not JSON, not an object, a bad id, a missing field, or an
            unknown task.
    """
    if isinstance(raw, UnreadableRow):
        raise RowError(location, None, "<line>", raw.problem)
    if isinstance(raw, str):
        try:
            raw = _loads(raw)
        except ValueError as err:
            raise RowError(location, None, "<line>", f"not a row: {err}") from None
    elif isinstance(raw, (dict, list)) and (problem := _structure_problem(raw)):
        raise RowError(location, None, "<row>", problem)
    if not isinstance(raw, dict):
        raise RowError(location, None, "<row>", f"expected an object, got {type(raw).__name__}")
    rid, explicit = _row_id(raw, location)
    for name in required:
        if raw.get(name) is None:
            raise RowError(location, rid, name, "missing")
    return raw, rid, explicit, _task(raw["task"], location, rid)


def _task(value: Any, location: str, rid: str) -> Task:
    if not isinstance(value, str) or len(value) > 64 or not value.isprintable():
        raise RowError(location, rid, "task", f"unknown task {shown(value)}")
    try:
        return get_task(value)
    except UnknownTaskError as err:
        raise RowError(location, rid, "task", str(err)) from None


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
    split, setting = row.get("split"), row.get("setting")
    if not isinstance(split, str) or not split or len(split) > 64 or not split.isprintable():
        raise RowError(loc, rid, "split", f"expected a split name, got {shown(split)}")
    if setting is not None and (
        not isinstance(setting, str) or len(setting) > 64 or not setting.isprintable()
    ):
        raise RowError(
            loc, rid, "setting", f"expected IND, OOD or a short name, got {shown(setting)}"
        )
    key = split if setting in (None, "", "IND", "ind") else f"{split}/{setting}"
    if key not in split_map:
        raise RowError(
            loc,
            rid,
            "split" if key == split else "setting",
            f"'{key}' is not in data.split_map (known: {', '.join(sorted(split_map))}); "
            f"{split_map_advice(key, 'test_ood' if key != split else 'val')}",
        )
    return split_map[key]


def split_map_advice(key: str, canonical: str) -> str:
    """How to map the dataset split ``key`` to ``canonical``: a command-line override that works
    pasted into a shell (the bracket form keeps a ``/`` or ``.`` inside the key), or, for a key
    no override can spell, the YAML to add."""
    if re.fullmatch(r"[^\[\]=\s'\"]+(?: [^\[\]=\s'\"]+)*", key):
        return f"add it, e.g. {shlex.quote(f'data.split_map[{key}]={canonical}')}"
    return (
        f"add it to the config file, e.g. data: {{split_map: {{{json.dumps(key)}: {canonical}}}}}"
    )


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
    return _parse_gold_row(raw, location, split_map)[0]


def _parse_gold_row(raw: Any, location: str, split_map: dict[str, str]) -> tuple[GoldRow, bool]:
    """:func:`parse_gold_row`, and whether the source gave the row's id."""
    raw, rid, explicit, task = _row_head(raw, location, ("task", "split", "output"))
    output = raw["output"]
    if not isinstance(output, str) or not output.strip():
        raise RowError(location, rid, "output", f"expected a non-empty string, got {shown(output)}")
    options, _ = _options_field(raw, location, rid)
    split = _canonical_split(raw, location, rid, split_map)
    extras = {k: v for k, v in raw.items() if k not in SCHEMA_FIELDS}
    row = GoldRow(rid, task.code, split, output, tuple(options) if options is not None else None,
                  location, extras)  # fmt: skip
    return row, explicit


class _RowIds:
    """Gives each row of a load a unique id: a content id seen again (a row without an ``id``
    repeating an earlier row) gets ``#k``; an explicit id seen again is an error, since captions,
    votes and predictions join on ids."""

    def __init__(self) -> None:
        self.seen: Counter = Counter()
        self.first: dict[str, str] = {}

    def assign(self, rid: str, explicit: bool, location: str) -> tuple[str, bool]:
        """The id the row keeps, and whether it repeats an earlier row's content.

        Raises:
            RowError: an explicit id that an earlier row has, naming both rows.
        """
        if explicit and rid in self.first:
            raise RowError(
                location, rid, "id",
                f"repeats the id of the row at {self.first[rid]}; ids must be unique (captions, "
                "votes and predictions join rows on them)",
            )  # fmt: skip
        self.seen[rid] += 1
        self.first.setdefault(rid, location)
        n = self.seen[rid]
        return (rid, False) if n == 1 else (f"{rid}#{n}", True)


def load_gold_rows(
    source: str, split_map: dict[str, str], hub_split: str = "train"
) -> list[GoldRow]:
    """Every row of ``source`` as a :class:`GoldRow`, with the ids :func:`load_records` gives them
    (a row without an ``id`` that repeats an earlier row gets ``#k``), in source order.

    Raises:
        RowError: the first invalid row, or an explicit id that an earlier row has.
        DataError: an unreadable source.
    """
    ids = _RowIds()
    rows = []
    for location, raw in iter_raw_rows(source, hub_split):
        row, explicit = _parse_gold_row(raw, location, split_map)
        rid, _ = ids.assign(row.id, explicit, location)
        rows.append(replace(row, id=rid))
    if not rows:
        raise DataError(f"{source} holds no rows")
    return rows


def parse_row(raw: Any, location: str, split_map: dict[str, str]) -> Record:
    """Validate one raw row (a dict, or a JSON line) into a :class:`Record`.

    Raises:
        RowError: naming the location, row id, field and problem.
    """
    return _parse_row(raw, location, split_map)[0]


def _parse_row(raw: Any, location: str, split_map: dict[str, str]) -> tuple[Record, bool]:
    """:func:`parse_row`, and whether the source gave the row's id."""
    raw, rid, explicit, task = _row_head(raw, location, REQUIRED_FIELDS)
    split = _canonical_split(raw, location, rid, split_map)
    instruction, output = raw["instruction"], raw["output"]
    for name, value in (("instruction", instruction), ("output", output)):
        if not isinstance(value, str) or not value.strip():
            raise RowError(location, rid, name, f"expected a non-empty string, got {shown(value)}")

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
            labels = ", ".join(shown(option_label(o), 40) for o in options[:20])
            raise RowError(
                location, rid, "output", f"{shown(output)} is not among the options ({labels})"
            )
    elif task.fixed_labels:
        if output not in task.fixed_labels:
            raise RowError(
                location,
                rid,
                "output",
                f"{shown(output)} is not one of {', '.join(task.fixed_labels)}",
            )
    else:
        raise RowError(location, rid, "options", f"task {task.code} needs a non-empty options list")

    extras = {k: v for k, v in raw.items() if k not in SCHEMA_FIELDS}
    record = Record(
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
    return record, explicit


# --------------------------------------------------------------------------------------------------
# Loading with selection


def validate_rows(
    rows: Iterable[tuple[str, Any]],
    split_map: dict[str, str],
    on_error: str,
    report: LoadReport,
) -> Iterator[Record]:
    """Validate rows, raising or skipping (counted, located) on bad ones.

    A row without an ``id`` that repeats an earlier row's content gets ``#k``; a repeated explicit
    ``id`` is a bad row.
    """
    ids = _RowIds()
    for location, raw in rows:
        report.rows_read += 1
        try:
            record, explicit = _parse_row(raw, location, split_map)
            rid, repeated = ids.assign(record.id, explicit, location)
        except RowError as err:
            if on_error == "raise":
                raise
            report.skip(err)
            continue
        report.duplicate_ids += repeated
        yield replace(record, id=rid) if repeated else record


def _content_key(record: Record) -> str:
    """The row's content without its split: a row copied from one split into another keeps it."""
    return _hash([record.task, record.instruction, record.input, record.options, record.output,
                  record.images])  # fmt: skip


def count_overlap(contents: Iterable[tuple[str, str]], train_split: str) -> Counter:
    """Rows of each other split whose content is also a ``train_split`` row's.

    Args:
        contents: ``(split, content key)`` of every row (:func:`_content_key`).
        train_split: The training split.

    Returns:
        Row counts by ``(train_split, other split)``.
    """
    contents = list(contents)
    train = {key for split, key in contents if split == train_split}
    return Counter(
        (train_split, split) for split, key in contents if split != train_split and key in train
    )


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
    contents: list[tuple[str, str]] = []
    raw_rows = iter_raw_rows(cfg.source, cfg.hub_split)
    for record in validate_rows(raw_rows, dict(cfg.split_map), cfg.on_error, report):
        seen_pairs[(record.task, record.split)] += 1
        contents.append((record.split, _content_key(record)))
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
        log.warning("skipped %d invalid rows: %s; the first:\n%s", report.n_skipped,
                    report.summary(), report.first_skipped())  # fmt: skip
    report.overlap = count_overlap(contents, cfg.train_split)
    if report.overlap:
        log.warning("%s: %s", cfg.source, overlap_text(report.overlap))
    if not kept:
        have = ", ".join(f"{t}/{s}" for t, s in sorted(seen_pairs)) or "no valid rows at all"
        raise DataError(
            f"nothing left after filters in {cfg.source}: wanted tasks {sorted(want_tasks)} and "
            f"splits {sorted(want_splits)}; the source has {have}"
        )
    return kept, report
