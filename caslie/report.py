"""Finished runs -> the paper's table layouts (Tables 2, 3, 4, A9), with the paper's numbers beside.

:func:`collect` reads every run folder under a folder (``metrics.json`` and the grid's
``grid.json``); :func:`build_tables` lays them out as :class:`Table` objects, which
:mod:`caslie.render` writes as Markdown, LaTeX and CSV and :mod:`caslie.charts` draws.

Each cell is a task's primary metric (F1, R@1, M-F1 or accuracy) on ``test_ind`` or ``test_ood``.
Table 2 adds the paper's footer rows: "imprv over best" (the best CASLIE row, fusion ``mv``, over
the best baseline, fusion ``none`` or FashionCLIP, in %), "average imprv" (the best CASLIE row
over each baseline, averaged) and "caption used" (the share of captions MV kept). When the runs'
rows carry a ``caption_dependent`` flag (the synthetic generator's), the same layout is also
scored on the caption-dependent rows alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from caslie.config import DEFAULT_SPLIT_MAP
from caslie.data.records import load_gold_rows
from caslie.errors import CaslieError, DataError, MissingPathError
from caslie.grid import GRID_MANIFEST, TABLES
from caslie.metrics import task_metrics
from caslie.paper import OOD_TASKS, paper_key, paper_values
from caslie.tasks import TASK_CODES, TASKS

log = logging.getLogger(__name__)

SPLITS = {"ind": "test_ind", "ood": "test_ood"}
"""Report split -> the run's evaluation split."""
SLICE = "caption_dependent"
"""The row flag whose rows get their own table."""
METRIC_NAMES = {"f1": "F1", "r1": "R@1", "macro_f1": "M-F1", "acc": "Acc"}
"""How the paper heads each primary metric."""
TITLES = {
    "table2": "Table 2: overall performance (primary metric per task)",
    "table3": "Table 3: generalist vs task-specific",
    "table4": "Table 4: captioning models",
    "a9": "Table A9: caption quality evaluation strategies",
}


@dataclass
class Run:
    """One finished run, as the report needs it.

    Attributes:
        name: The run folder's name.
        identity: ``metrics.json["identity"]`` (model, fusion, voters, caption model, tasks...).
        scores: ``{split: {task: primary metric}}`` over ``ind``/``ood``.
        caption_used: ``{split: {task: %}}`` from the data manifest.
        labels: The run's grid axis values (``{axis: value}``), when it came from a grid.
        slices: ``{slice: {split: {task: primary metric}}}`` on flagged rows.
    """

    name: str
    identity: dict[str, Any]
    scores: dict[str, dict[str, float | None]]
    caption_used: dict[str, dict[str, float]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    slices: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)

    @property
    def fusion(self) -> str:
        return str(self.identity.get("fusion") or "")

    @property
    def role(self) -> str:
        """``method`` (CASLIE with MV), ``baseline`` (text only, FashionCLIP) or ``other``."""
        if self.identity.get("model_kind") == "fashionclip" or self.fusion == "none":
            return "baseline"
        return "method" if self.fusion == "mv" else "other"


@dataclass
class Row:
    """A table row: its label, cells by ``(split, task)``, and the paper row it reproduces."""

    label: str
    cells: dict[tuple[str, str], float | None]
    paper: dict[str, str] | None = None
    footer: bool = False


@dataclass
class Table:
    """One report table."""

    name: str
    title: str
    columns: list[tuple[str, str]]
    rows: list[Row]
    """Body rows (metrics) then footer rows (percentages)."""

    def body(self) -> list[Row]:
        return [r for r in self.rows if not r.footer]


def header(split: str, task: str) -> str:
    """A column's heading: ``IND AP F1``."""
    return f"{split.upper()} {task.upper()} {METRIC_NAMES[TASKS[task].primary]}"


def _scores(metrics: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for split, run_split in SPLITS.items():
        per_task = metrics.get(run_split) or {}
        out[split] = {t: m.get(m["primary"]) for t, m in per_task.items() if t in TASKS}
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read it as JSON ({err})") from None


def collect(folder: Path) -> tuple[list[Run], str | None]:
    """Every finished run under ``folder`` (folders holding ``metrics.json``, two levels deep at
    most) and the layout its ``grid.json`` names (``None`` without one).

    Raises:
        MissingPathError: no such folder, or no finished run in it.
        DataError: an unreadable ``metrics.json`` or ``grid.json``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingPathError(f"{folder} is not a folder of runs")
    grid = _read_json(folder / GRID_MANIFEST) if (folder / GRID_MANIFEST).is_file() else {}
    labels = grid.get("runs") or {}
    found = sorted({p.parent for p in [*folder.glob("metrics.json"), *folder.glob("*/metrics.json"),
                                        *folder.glob("*/*/metrics.json")]})  # fmt: skip
    order = list(labels)
    found.sort(key=lambda p: (order.index(p.name) if p.name in order else len(order), str(p)))
    runs = []
    for run_dir in found:
        body = _read_json(run_dir / "metrics.json")
        if not isinstance(body, dict) or "metrics" not in body:
            raise DataError(f"{run_dir / 'metrics.json'}: no 'metrics' (not written by train.py)")
        run = Run(run_dir.name, body.get("identity") or {}, _scores(body["metrics"]),
                  body.get("caption_used_pct") or {}, labels.get(run_dir.name, {}))  # fmt: skip
        run.slices = _slices(run_dir)
        runs.append(run)
    if not runs:
        raise MissingPathError(f"{folder} holds no finished run (no metrics.json below it)")
    missing = sorted(set(labels) - {r.name for r in runs})
    if missing:
        log.warning("%d grid run(s) have not finished and are left out: %s", len(missing),
                    ", ".join(missing))  # fmt: skip
    return runs, grid.get("table")


_FLAGS: dict[str, dict[str, bool]] = {}


def _flags(source: str, split_map: dict[str, str]) -> dict[str, bool]:
    """``{row id: flag}`` of the source's rows that carry a boolean :data:`SLICE` column."""
    if source not in _FLAGS:
        try:
            rows = load_gold_rows(source, split_map)
        except CaslieError as err:  # the report still renders; the slice is left out, and said so
            log.warning("cannot read %s for the %s rows (%s); that table is left out", source,
                        SLICE, err)  # fmt: skip
            rows = []
        _FLAGS[source] = {r.id: r.extras[SLICE] for r in rows
                          if isinstance(r.extras.get(SLICE), bool)}  # fmt: skip
    return _FLAGS[source]


def _slices(run_dir: Path) -> dict[str, dict[str, dict[str, float | None]]]:
    if not (run_dir / "config.yaml").is_file():
        return {}
    cfg = OmegaConf.load(run_dir / "config.yaml")
    source = OmegaConf.select(cfg, "data.source")
    split_map = OmegaConf.select(cfg, "data.split_map") or DEFAULT_SPLIT_MAP
    flags = _flags(str(source), dict(split_map)) if source else {}
    if not any(flags.values()):
        return {}
    out: dict[str, dict[str, float | None]] = {}
    for split, run_split in SPLITS.items():
        path = run_dir / "predictions" / f"{run_split}.jsonl"
        if not path.is_file():
            continue
        groups: dict[str, list[dict]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if flags.get(str(row.get("id"))):
                groups.setdefault(row["task"], []).append(row)
        out[split] = {}
        for task, rows in groups.items():
            m = task_metrics(task, [r["gold"] for r in rows], [r["parsed"] for r in rows])
            out[split][task] = m.get(m["primary"])
    return {SLICE: out}


def _columns(table: str, runs: list[Run]) -> list[tuple[str, str]]:
    present = {t for r in runs for s in r.scores.values() for t in s}
    ind = [("ind", t) for t in TASK_CODES if t in present]
    if table != "table2":
        return ind
    return ind + [("ood", t) for t in OOD_TASKS if any(t in r.scores.get("ood", {}) for r in runs)]


def _label(run: Run) -> str:
    return " / ".join(run.labels.values()) if run.labels else run.name


def _row(run: Run, columns: list[tuple[str, str]], table: str,
         scores: dict[str, dict[str, float | None]] | None = None) -> Row:  # fmt: skip
    scores = run.scores if scores is None else scores
    cells = {(s, t): scores.get(s, {}).get(t) for s, t in columns}
    return Row(_label(run), cells, paper_key(table, run.identity))


def _pct(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return 100.0 * (a - b) / b


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def improvement_rows(methods: list[Row], baselines: list[Row],
                     columns: list[tuple[str, str]]) -> list[Row]:  # fmt: skip
    """Table 2's "imprv over best" and "average imprv" rows (in %), per column and on average."""
    best_method = {c: max((v for r in methods if (v := r.cells.get(c)) is not None), default=None)
                   for c in columns}  # fmt: skip
    over_best, average = {}, {}
    for c in columns:
        base = [v for r in baselines if (v := r.cells.get(c)) is not None]
        over_best[c] = _pct(best_method[c], max(base)) if base else None
        average[c] = _mean([_pct(best_method[c], b) for b in base])
    return [
        Row(f"imprv over best (%; avg: {_fmt_avg(over_best)})", over_best, footer=True),
        Row(f"average imprv (%; avg: {_fmt_avg(average)})", average, footer=True),
    ]


def _fmt_avg(cells: dict[Any, float | None]) -> str:
    mean = _mean(list(cells.values()))
    return "n/a" if mean is None else f"{mean:.1f}"


def _caption_used_row(runs: list[Run], columns: list[tuple[str, str]]) -> Row | None:
    methods = [r for r in runs if r.role == "method" and r.caption_used]
    if not methods:
        return None
    cells = {(s, t): _mean([r.caption_used.get(SPLITS[s], {}).get(t) for r in methods])
             for s, t in columns}  # fmt: skip
    return Row(f"caption used (%; avg: {_fmt_avg(cells)})", cells, footer=True)


def _task_specific(runs: list[Run], columns: list[tuple[str, str]], table: str,
                   pick: str) -> list[Row]:  # fmt: skip
    """Table 3: a generalist row per model, and one task-specific row that takes each task's
    cell from the run trained on that task alone."""
    rows: list[Row] = []
    by_model: dict[str, list[Run]] = {}
    for run in runs:
        by_model.setdefault(str(run.identity.get("model")), []).append(run)
    for model, group in by_model.items():
        single = {}
        for run in group:
            tasks = list(run.identity.get("tasks") or [])
            if len(tasks) == 1:
                single[tasks[0]] = run
            else:
                row = _row(run, columns, table, _pick(run, pick))
                row.label = f"{model} generalist"
                rows.append(row)
        if single:
            cells = {(s, t): _pick(single[t], pick).get(s, {}).get(t) if t in single else None
                     for s, t in columns}  # fmt: skip
            first = next(iter(single.values()))
            rows.append(Row(f"{model} task-specific", cells, paper_key(table, first.identity)))
    return rows


def _pick(run: Run, pick: str) -> dict[str, dict[str, float | None]]:
    return run.scores if pick == "all" else run.slices.get(pick, {})


def build_table(table: str, runs: list[Run], pick: str = "all") -> Table:
    """Lay ``runs`` out as ``table`` (``table2``, ``table3``, ``table4`` or ``a9``).

    Args:
        table: The layout.
        runs: The runs, in row order.
        pick: ``all`` (every test row) or a slice name (:data:`SLICE`).

    Raises:
        ValueError: an unknown layout.
    """
    if table not in TABLES:
        raise ValueError(f"unknown report layout '{table}' (choose from {', '.join(TABLES)})")
    runs = [r for r in runs if pick == "all" or r.slices.get(pick)]
    columns = _columns(table, runs)
    title = TITLES[table] + ("" if pick == "all" else f", {pick.replace('_', '-')} rows only")
    name = table if pick == "all" else f"{table}_{pick}"
    if table == "table3":
        return Table(name, title, columns, _task_specific(runs, columns, table, pick))
    rows = [_row(r, columns, table, _pick(r, pick)) for r in runs]
    if table == "table2":
        methods = [row for row, r in zip(rows, runs, strict=True) if r.role == "method"]
        baselines = [row for row, r in zip(rows, runs, strict=True) if r.role == "baseline"]
        if methods and baselines:
            rows += improvement_rows(methods, baselines, columns)
        used = _caption_used_row(runs, columns) if pick == "all" else None
        if used:
            rows.append(used)
    return Table(name, title, columns, rows)


def paper_table(table: Table) -> Table:
    """The paper's own numbers for the rows of ``table`` that reproduce one (for charts)."""
    rows = []
    for row in table.body():
        if row.paper is None:
            continue
        published = {s: paper_values(table.name.split("_")[0], row.paper, s) for s in SPLITS}
        cells = {(s, t): published[s].get(t) for s, t in table.columns}
        rows.append(Row(row.label, cells, row.paper))
    return Table(f"{table.name}_paper", f"{table.title} (paper)", table.columns, rows)


def paper_deltas(table: Table) -> Table:
    """Each row that reproduces a paper row: ours minus the paper's number, per cell."""
    ours = {r.label: r for r in table.body()}
    rows = []
    for theirs in paper_table(table).rows:
        if all(v is None for v in theirs.cells.values()):
            continue  # the paper has no such row (or split)
        mine = ours[theirs.label]
        cells = {c: None if t is None or (m := mine.cells.get(c)) is None else m - t
                 for c, t in theirs.cells.items()}  # fmt: skip
        paper_name = " ".join(v for v in theirs.paper.values() if v)
        rows.append(Row(f"{theirs.label} - {paper_name}", cells, theirs.paper))
    return Table(f"{table.name}_vs_paper", f"{table.title}: ours minus the paper's", table.columns,
                 rows)  # fmt: skip
