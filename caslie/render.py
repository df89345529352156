"""Report tables as Markdown, LaTeX and CSV (metrics to three decimals, footer rows to one
decimal, the best body cell of each column in bold, as the paper prints them), and
:func:`write_report`, which writes a folder's whole report."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from caslie.charts import draw
from caslie.paper import column
from caslie.report import (
    METRIC_NAMES,
    SLICE,
    Row,
    Table,
    build_table,
    collect,
    header,
    paper_deltas,
    paper_table,
)
from caslie.tasks import TASKS


def _cell(row: Row, value: float | None, delta: bool) -> str:
    if value is None:
        return "-"
    if delta:
        return f"{value:+.3f}"
    return f"{value:.1f}" if row.footer else f"{value:.3f}"


def _best(table: Table) -> dict[tuple[str, str], float]:
    out = {}
    for c in table.columns:
        values = [v for r in table.body() if (v := r.cells.get(c)) is not None]
        if values and len(table.body()) > 1:
            out[c] = max(values)
    return out


def _is_delta(table: Table) -> bool:
    return table.name.endswith("_vs_paper")


def to_markdown(table: Table) -> str:
    """A Markdown table with the title above it."""
    delta, best = _is_delta(table), _best(table)
    lines = [f"### {table.title}", "", "| run | " + " | ".join(header(*c) for c in table.columns)
             + " |", "|---|" + "---:|" * len(table.columns)]  # fmt: skip
    for row in table.rows:
        cells = []
        for c in table.columns:
            text = _cell(row, row.cells.get(c), delta)
            bold = not delta and not row.footer and c in best and row.cells.get(c) == best[c]
            cells.append(f"**{text}**" if bold else text)
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A ``tabular`` (booktabs rules) with IND and OOD column groups, as the paper sets it."""
    delta, best = _is_delta(table), _best(table)
    groups = [(s, sum(1 for c in table.columns if c[0] == s)) for s in ("ind", "ood")]
    groups = [(s, n) for s, n in groups if n]
    out = [f"% {_tex(table.title)}", r"\begin{tabular}{l" + "r" * len(table.columns) + "}",
           r"\toprule",
           " & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{s.upper()}}}" for s, n in groups)
           + r" \\",
           "Model & " + " & ".join(f"{t.upper()}" for _, t in table.columns) + r" \\",
           " & " + " & ".join(METRIC_NAMES[TASKS[t].primary] for _, t in table.columns) + r" \\",
           r"\midrule"]  # fmt: skip
    body_done = False
    for row in table.rows:
        if row.footer and not body_done:
            out.append(r"\midrule")
            body_done = True
        cells = []
        for c in table.columns:
            text = _cell(row, row.cells.get(c), delta)
            bold = not delta and not row.footer and c in best and row.cells.get(c) == best[c]
            cells.append(rf"\textbf{{{text}}}" if bold else text)
        out.append(_tex(row.label) + " & " + " & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def to_csv(table: Table) -> str:
    """One line per row and split, columns named as the paper's CSVs (``ap_f1``, ``prp_mf1``...);
    the paper row a run reproduces in ``paper_row``."""
    tasks = list(dict.fromkeys(t for _, t in table.columns))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "paper_row", "split", *[column(t) for t in tasks]])
    for row in table.rows:
        paper = " ".join(v for v in (row.paper or {}).values() if v)
        for split in dict.fromkeys(s for s, _ in table.columns):
            values = [row.cells.get((split, t)) for t in tasks]
            writer.writerow([row.label, paper, split,
                             *["" if v is None else round(v, 4) for v in values]])  # fmt: skip
    return buf.getvalue()


def write_report(folder: Path, table: str | None = None, paper: bool = False,
                 out: Path | None = None) -> list[Path]:  # fmt: skip
    """Write the report of the runs under ``folder``: per table ``<name>.md``, ``.tex``, ``.csv``
    and ``.png`` in ``out`` (default ``<folder>/report``), plus ``report.md`` with every table.

    Args:
        folder: A grid's folder (or any folder of run folders).
        table: The layout; default: the one the grid's ``grid.json`` names, else ``table2``.
        paper: Also write each table's deltas against the paper's published numbers
            (``<name>_vs_paper.*``) and mark the paper's numbers on the charts.
        out: Where the files go.

    Returns:
        The files written, ``report.md`` first.

    Raises:
        MissingPathError: no folder, or no finished run in it.
        DataError: an unreadable run file.
    """
    runs, named = collect(folder)
    layout = table or named or "table2"
    out = Path(out) if out else Path(folder) / "report"
    out.mkdir(parents=True, exist_ok=True)
    tables = [build_table(layout, runs)]
    if any(r.slices for r in runs):
        tables.append(build_table(layout, runs, pick=SLICE))
    written: list[Path] = []
    sections = []
    for t in tables:
        # The paper has no caption-dependent slice: only the whole test sets compare with it.
        compare = paper and t.name == layout
        theirs = paper_table(t) if compare else None
        group = [t] + ([paper_deltas(t)] if compare else [])
        for item in group:
            if not item.rows:
                continue
            for suffix, text in ((".md", to_markdown(item)), (".tex", to_latex(item)),
                                 (".csv", to_csv(item))):  # fmt: skip
                path = out / f"{item.name}{suffix}"
                path.write_text(text, encoding="utf-8")
                written.append(path)
            sections.append(to_markdown(item))
        written.append(draw(t, out / f"{t.name}.png", theirs if theirs and theirs.rows else None))
        sections.append(f"![{t.title}]({t.name}.png)\n")
    index = out / "report.md"
    index.write_text(f"# Report: {Path(folder).resolve().name}\n\n" + "\n".join(sections),
                     encoding="utf-8")  # fmt: skip
    return [index, *written]
