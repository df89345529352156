"""Score generated answers: gather across ranks, count each row once, parse, compute task metrics.

The same code scores a training run's generations and an external predictions file
(``caslie evaluate``), so the two always agree.
"""

from __future__ import annotations

import codecs
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caslie.config import DEFAULT_SPLIT_MAP, SPLITS
from caslie.data.records import GoldRow, load_gold_rows, shown
from caslie.errors import DataError, MissingPathError
from caslie.metrics import mean_primary, task_metrics
from caslie.parsing import parse_answer, parse_paper
from caslie.tasks import TASK_CODES

PRIMARY_MEAN = "primary_mean"
"""Key of the mean primary metric over a split's tasks: ``metrics[split][PRIMARY_MEAN]``, logged as
``<split>/primary_mean`` (``val/primary_mean`` picks the best checkpoint and drives W&B sweeps)."""


def gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' prediction rows on every rank, each ``(split, id)`` once.

    A distributed sampler tops evaluation up with repeated rows so that ranks get equal shares; the
    repeats are dropped here.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, rows)
        rows = [row for part in parts for row in part]
    seen: set[tuple[str, str]] = set()
    unique = []
    for row in rows:
        key = (row["split"], row["id"])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return sorted(unique, key=lambda r: (r["split"], TASK_CODES.index(r["task"]), r["id"]))


def score_rows(rows: Iterable[dict[str, Any]], parser: str = "paper") -> dict[str, dict[str, Any]]:
    """Parse each row's ``generated`` text and score it per split and task.

    Each row needs ``split``, ``task``, ``gold`` and ``generated`` (``options`` helps the robust
    parser). The valid labels of a task are the gold labels of its rows in that split, as in the
    paper. Each row gets ``parsed`` (``None`` when failed) and ``correct``.

    Returns:
        ``{split: {task: metrics, ..., "primary_mean": float | None}}``.
    """
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["split"], row["task"])].append(row)
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for (split, task), group in sorted(groups.items()):
        valid = {r["gold"] for r in group}
        rescued = 0
        for r in group:
            r["parsed"] = parse_answer(r["generated"], valid, parser, r.get("options"))
            r["correct"] = r["parsed"] == r["gold"]
            if parser != "paper" and r["parsed"] is not None:
                rescued += parse_paper(r["generated"], valid) is None
        metrics = task_metrics(task, [r["gold"] for r in group], [r["parsed"] for r in group])
        if parser != "paper":
            metrics["rescued"] = rescued
        out[split][task] = metrics
    for per_task in out.values():
        per_task[PRIMARY_MEAN] = mean_primary(per_task)
    return dict(out)


def write_predictions(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Write ``<folder>/<split>.jsonl``, one object per row, and return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    by_split: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_split[row["split"]].append(row)
    paths = []
    for split, split_rows in by_split.items():
        path = folder / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for row in split_rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
        paths.append(path)
    return paths


def format_table(metrics: dict[str, dict[str, Any]]) -> str:
    """A per-task table of primary metrics (rows: splits; columns: tasks), plus failed counts."""
    tasks = [t for t in TASK_CODES if any(t in m for m in metrics.values())]
    head = f"{'split':<10}" + "".join(f"{t:>16}" for t in tasks) + f"{'mean':>8}"
    lines = [head, "-" * len(head)]
    for split, per_task in metrics.items():
        cells = []
        for t in tasks:
            m = per_task.get(t)
            if m is None:
                cells.append(f"{'-':>16}")
                continue
            value = m.get(m["primary"])
            text = "n/a" if value is None else f"{value:.3f}"
            cells.append(f"{m['primary'] + ' ' + text:>16}")
        mean = per_task.get(PRIMARY_MEAN)
        lines.append(
            f"{split:<10}" + "".join(cells) + f"{'n/a' if mean is None else f'{mean:.3f}':>8}"
        )
        failed = sum(m["failed"] for k, m in per_task.items() if k != PRIMARY_MEAN)
        scored = sum(m["n"] for k, m in per_task.items() if k != PRIMARY_MEAN)
        lines[-1] += f"   ({scored} scored, {failed} failed)"
    return "\n".join(lines)


@dataclass
class Predictions:
    """A predictions file, read.

    Attributes:
        by_id: The answer for each row id (the first, when an id repeats; ``""`` for ``null``,
            which scores as failed).
        where: Where each id's first prediction is (``file:line``, or ``file[index]``).
        repeats: ``(id, location)`` of every prediction for an id predicted before.
    """

    by_id: dict[str, str] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    repeats: list[tuple[str, str]] = field(default_factory=list)

    def add(self, row_id: str, answer: str | None, location: str) -> None:
        """Keep ``answer`` for ``row_id`` unless the id has one already (then count a repeat)."""
        if row_id in self.by_id:
            self.repeats.append((row_id, location))
            return
        self.by_id[row_id] = answer if answer is not None else ""
        self.where[row_id] = location


def _json_value(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err.msg}, char {err.pos})") from None
    except RecursionError:
        raise DataError(f"{where}: not valid JSON (nested too deeply to parse)") from None
    except ValueError as err:  # a number of thousands of digits
        raise DataError(f"{where}: not valid JSON ({err})") from None


def _answer(value: Any, where: str, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: {what} must be a string or null, got {type(value).__name__}")
    return value


def _read_list(path: Path, text: str, ids: list[str]) -> Predictions:
    preds = _json_value(text, str(path))
    if not isinstance(preds, list):
        raise DataError(f"{path}: expected a JSON list of predictions, got {type(preds).__name__}")
    if len(preds) != len(ids):
        raise DataError(
            f"{path}: {len(preds)} predictions for {len(ids)} rows; a JSON list must align with the rows"
        )
    out = Predictions()
    for i, (row_id, value) in enumerate(zip(ids, preds, strict=True)):
        out.add(
            row_id, _answer(value, f"{path}[{i}]", f"prediction {i} (row {row_id})"), f"{path}[{i}]"
        )
    return out


def _read_lines(path: Path, data: bytes) -> Predictions:
    out = Predictions()
    for n, raw in enumerate(data.splitlines(), 1):
        where = f"{path}:{n}"
        try:  # each line on its own, so that a bad byte names its line
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{where}: not UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start})"
            ) from None
        if not line.strip():
            continue
        obj = _json_value(line, where)
        if (
            not isinstance(obj, dict)
            or "id" not in obj
            or not ({"prediction", "generated"} & set(obj))
        ):
            raise DataError(f"{where}: expected a JSON object with 'id' and 'prediction'")
        row_id = obj["id"]
        if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
            raise DataError(
                f"{where}: 'id' must be a string or integer, got {type(row_id).__name__}"
            )
        key = "prediction" if "prediction" in obj else "generated"
        out.add(str(row_id), _answer(obj[key], where, f"'{key}'"), where)
    return out


def read_predictions(path: Path, ids: list[str]) -> Predictions:
    """Predictions by row id from a JSON list aligned with ``ids`` or a JSONL of ``id`` and
    ``prediction`` (or ``generated``); an answer is a string, or ``null`` for none.

    Raises:
        MissingPathError: no such file.
        DataError: an unreadable file, bad JSON, a length mismatch, or a line or entry of the
            wrong shape, naming the file and line (or index).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingPathError(f"predictions file {path} does not exist") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read the predictions ({err.strerror or err})") from None
    if data.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"["):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{data[err.start]:02x})") from None
        return _read_list(path, text, ids)
    return _read_lines(path, data)


def coverage_problem(coverage: dict[str, int], examples: dict[str, str]) -> str | None:
    """What keeps predictions from matching the rows one to one (missing rows, ids that are not
    rows, repeated ids), with an example of each, or ``None``."""
    parts = []
    if coverage["missing"]:
        parts.append(
            f"{coverage['missing']} of {coverage['rows']} rows have no prediction ({examples['missing']})"
        )
    if coverage["unknown"]:
        parts.append(
            f"{coverage['unknown']} prediction ids are not rows of the data ({examples['unknown']})"
        )
    if coverage["duplicate"]:
        parts.append(
            f"{coverage['duplicate']} predictions repeat an id predicted before ({examples['duplicate']})"
        )
    return "; ".join(parts) or None


def evaluate_file(
    data: str,
    predictions: Path,
    parser: str = "paper",
    split: str | None = None,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Score an external predictions file against MMECInstruct rows (``caslie evaluate``).

    Each canonical split of ``data`` (``val``, ``test_ind``, ``test_ood``...: the ``setting`` column
    tells IND from OOD) is scored on its own. Only ``task``, ``split``, ``output`` and ``options`` of
    a row are needed. The predictions must match the scored rows one to one; with
    ``allow_missing`` a row without a prediction is counted as ``missing`` (not ``failed``, which
    means a prediction that does not parse), a repeated id keeps its first prediction and an id
    that is no row is ignored, each counted under ``coverage``.

    Args:
        data: MMECInstruct rows (file, folder, hub id or ``sample``).
        predictions: A JSON list aligned with the rows, or JSONL with ``id`` and ``prediction``.
        parser: ``paper`` or ``robust``.
        split: Score only this split (a canonical name, or a dataset name such as ``test``).
        allow_missing: Score predictions that do not cover the rows one to one.

    Returns:
        ``{"coverage": counts, task: metrics, ...}`` for ``split``, else
        ``{"coverage": counts, split: {task: metrics}, ...}``; ``coverage`` counts ``rows``,
        ``predicted``, ``missing``, ``duplicate``, ``unknown`` and ``failed``.

    Raises:
        DataError: an empty predictions file, predictions that do not match the rows one to one
            (unless ``allow_missing``), or a split the rows do not have.
    """
    split_map = dict(DEFAULT_SPLIT_MAP)
    rows = load_gold_rows(data, split_map)
    preds = read_predictions(predictions, [r.id for r in rows])
    if not preds.by_id:
        raise DataError(f"{predictions}: holds no predictions")
    present = sorted({r.split for r in rows}, key=SPLITS.index)
    wanted = present
    if split is not None:
        wanted = [split_map.get(split, split)]
        if wanted[0] not in present:
            raise DataError(
                f"--split {split}: {data} has no rows of that split (splits present: "
                f"{', '.join(present)})"
            )
    scored_rows = [r for r in rows if r.split in wanted]
    coverage, examples = _coverage(rows, scored_rows, preds)
    problem = coverage_problem(coverage, examples)
    if problem and not allow_missing:
        raise DataError(
            f"{predictions} does not match the rows of {data} one to one: {problem}; fix the "
            "file, or pass --allow-missing to score what is there (each case counted)"
        )
    scored = [
        {"split": r.split, "task": r.task, "gold": r.output, "generated": preds.by_id[r.id], "options": r.options}
        for r in scored_rows if r.id in preds.by_id
    ]  # fmt: skip
    metrics = score_rows(scored, parser)
    out: dict[str, Any] = {}
    for s in wanted:
        per_task = metrics.get(s, {})
        per_task.pop(PRIMARY_MEAN, None)
        for task in sorted({r.task for r in rows if r.split == s}, key=TASK_CODES.index):
            missing = sum(r.id not in preds.by_id for r in rows if r.split == s and r.task == task)
            per_task[task] = per_task.get(task) or task_metrics(task, [], [])
            per_task[task]["missing"] = missing
        out[s] = {t: per_task[t] for t in TASK_CODES if t in per_task}
    coverage["failed"] = sum(m["failed"] for per_task in out.values() for m in per_task.values())
    if split is not None:
        return {"coverage": coverage, **out[wanted[0]]}
    return {"coverage": coverage, **out}


def _coverage(
    rows: list[GoldRow], scored_rows: list[GoldRow], preds: Predictions
) -> tuple[dict[str, int], dict[str, str]]:
    """Counts of how the predictions meet the scored rows, and an example of each problem."""
    row_ids = {r.id for r in rows}
    missing = [r for r in scored_rows if r.id not in preds.by_id]
    unknown = [i for i in preds.by_id if i not in row_ids]
    coverage = {
        "rows": len(scored_rows),
        "predicted": len(scored_rows) - len(missing),
        "missing": len(missing),
        "duplicate": len(preds.repeats),
        "unknown": len(unknown),
    }
    examples = {}
    if missing:
        examples["missing"] = f"e.g. row {missing[0].id} at {missing[0].location}"
    if unknown:
        examples["unknown"] = f"e.g. {shown(unknown[0])} at {preds.where[unknown[0]]}"
    if preds.repeats:
        rid, where = preds.repeats[0]
        examples["duplicate"] = f"e.g. {shown(rid)} at {preds.where[rid]} and {where}"
    return coverage, examples
