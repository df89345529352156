"""Score generated answers: gather across ranks, count each row once, parse, compute task metrics.

The same code scores a training run's generations and an external predictions file
(``caslie evaluate``), so the two always agree.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from caslie.config import DEFAULT_SPLIT_MAP, SPLITS
from caslie.data.records import load_gold_rows
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


def read_predictions(path: Path, ids: list[str]) -> dict[str, str]:
    """Predictions by row id from a JSON list aligned with ``ids`` or a JSONL of ``id``/``prediction``.

    Raises:
        DataError: a malformed file, a length mismatch, or a line without ``id``/``prediction``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingPathError(f"predictions file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the predictions ({err})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            preds = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
        if len(preds) != len(ids):
            raise DataError(
                f"{path}: {len(preds)} predictions for {len(ids)} rows; a JSON list must align with the rows"
            )
        return {i: str(p) for i, p in zip(ids, preds, strict=True)}
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            out[str(obj["id"])] = str(
                obj["prediction"] if "prediction" in obj else obj["generated"]
            )
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(
                f"{path}:{n}: expected a JSON object with 'id' and 'prediction'"
            ) from None
    return out


def evaluate_file(
    data: str, predictions: Path, parser: str = "paper", split: str | None = None
) -> dict[str, Any]:
    """Score an external predictions file against MMECInstruct rows (``caslie evaluate``).

    Each canonical split of ``data`` (``val``, ``test_ind``, ``test_ood``...: the ``setting`` column
    tells IND from OOD) is scored on its own. Only ``task``, ``split``, ``output`` and ``options`` of
    a row are needed. A row without a prediction is counted as ``missing`` (not ``failed``, which
    means a prediction that does not parse).

    Args:
        data: MMECInstruct rows (file, folder, hub id or ``sample``).
        predictions: A JSON list aligned with the rows, or JSONL with ``id`` and ``prediction``.
        parser: ``paper`` or ``robust``.
        split: Score only this split (a canonical name, or a dataset name such as ``test``).

    Returns:
        ``{task: metrics}`` for ``split``, else ``{split: {task: metrics}}``.

    Raises:
        DataError: predictions for ids that are not in the rows, or a split the rows do not have.
    """
    split_map = dict(DEFAULT_SPLIT_MAP)
    rows = load_gold_rows(data, split_map)
    preds = read_predictions(predictions, [r.id for r in rows])
    unknown = set(preds) - {r.id for r in rows}
    if unknown:
        raise DataError(
            f"{predictions}: {len(unknown)} prediction id(s) not in {data}, e.g. {sorted(unknown)[0]}"
        )
    present = sorted({r.split for r in rows}, key=SPLITS.index)
    wanted = present
    if split is not None:
        wanted = [split_map.get(split, split)]
        if wanted[0] not in present:
            raise DataError(
                f"--split {split}: {data} has no rows of that split (splits present: "
                f"{', '.join(present)})"
            )
    scored = [
        {"split": r.split, "task": r.task, "gold": r.output, "generated": preds[r.id], "options": r.options}
        for r in rows if r.split in wanted and r.id in preds
    ]  # fmt: skip
    metrics = score_rows(scored, parser)
    out: dict[str, Any] = {}
    for s in wanted:
        per_task = metrics.get(s, {})
        per_task.pop(PRIMARY_MEAN, None)
        for task in sorted({r.task for r in rows if r.split == s}, key=TASK_CODES.index):
            missing = sum(r.id not in preds for r in rows if r.split == s and r.task == task)
            per_task[task] = per_task.get(task) or task_metrics(task, [], [])
            per_task[task]["missing"] = missing
        out[s] = {t: per_task[t] for t in TASK_CODES if t in per_task}
    return out[wanted[0]] if split is not None else out
