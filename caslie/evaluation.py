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

from caslie.metrics import mean_primary, task_metrics
from caslie.parsing import parse_answer, parse_paper
from caslie.tasks import TASK_CODES


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
        per_task["primary_mean"] = mean_primary(per_task)
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
        mean = per_task.get("primary_mean")
        lines.append(
            f"{split:<10}" + "".join(cells) + f"{'n/a' if mean is None else f'{mean:.3f}':>8}"
        )
        failed = sum(m["failed"] for k, m in per_task.items() if k != "primary_mean")
        scored = sum(m["n"] for k, m in per_task.items() if k != "primary_mean")
        lines[-1] += f"   ({scored} scored, {failed} failed)"
    return "\n".join(lines)
