"""Report tables as Markdown, LaTeX and CSV, and the report folder ``caslie report`` writes."""

import csv
import io
import json

from conftest import write_finished_run

from caslie.render import to_csv, to_latex, to_markdown, write_report
from caslie.report import Row, Table

MISTRAL = "mistralai/Mistral-7B-Instruct-v0.3"


def _table() -> Table:
    columns = [("ind", "ap"), ("ind", "sa"), ("ood", "ap")]
    rows = [
        Row("text_only", {("ind", "ap"): 0.8, ("ind", "sa"): 0.61, ("ood", "ap"): None},
            {"model": "ft-Mistral-7B-v0.3", "fusion": "none"}),
        Row("mv & 50%", {("ind", "ap"): 0.9, ("ind", "sa"): 0.6, ("ood", "ap"): 0.7}),
        Row("imprv over best (%; avg: 5.0)", {("ind", "ap"): 12.5, ("ind", "sa"): -1.64,
            ("ood", "ap"): None}, footer=True),
    ]  # fmt: skip
    return Table("table2", "Table 2: overall", columns, rows)


def test_markdown_bolds_each_columns_best_and_prints_footers_as_percentages():
    md = to_markdown(_table())
    assert "| run | IND AP F1 | IND SA M-F1 | OOD AP F1 |" in md
    assert "| text_only | 0.800 | **0.610** | - |" in md
    assert "| mv & 50% | **0.900** | 0.600 | **0.700** |" in md
    assert "| imprv over best (%; avg: 5.0) | 12.5 | -1.6 | - |" in md


def test_latex_groups_ind_and_ood_and_escapes_labels():
    tex = to_latex(_table())
    assert r"\multicolumn{2}{c}{IND} & \multicolumn{1}{c}{OOD}" in tex
    assert r"text\_only & 0.800 & \textbf{0.610} & - \\" in tex
    assert r"mv \& 50\% & \textbf{0.900}" in tex
    assert tex.count(r"\midrule") == 2  # under the heading, above the footer rows
    assert tex.strip().endswith(r"\end{tabular}")


def test_csv_has_the_papers_columns_one_line_per_row_and_split():
    lines = list(csv.DictReader(io.StringIO(to_csv(_table()))))
    assert list(lines[0]) == ["row", "paper_row", "split", "ap_f1", "sa_mf1"]
    assert lines[0] == {"row": "text_only", "paper_row": "ft-Mistral-7B-v0.3 none", "split": "ind",
                        "ap_f1": "0.8", "sa_mf1": "0.61"}  # fmt: skip
    assert lines[1]["split"] == "ood" and lines[1]["ap_f1"] == "" and lines[1]["sa_mf1"] == ""


def test_write_report_writes_each_format_the_chart_and_with_paper_the_deltas(tmp_path):
    runs = tmp_path / "grid"
    (runs).mkdir()
    (runs / "grid.json").write_text(json.dumps({"name": "g", "table": "table2", "runs": {}}))
    for name, fusion, ap in (("text", "none", 0.8), ("mv", "mv", 0.9)):
        write_finished_run(runs, name, {"model": MISTRAL, "fusion": fusion},
                           {"test_ind": {"ap": ap}, "test_ood": {"ap": ap - 0.1}})  # fmt: skip
    written = write_report(runs, paper=True)
    names = sorted(p.name for p in written)
    assert names == sorted(["report.md", "table2.md", "table2.tex", "table2.csv", "table2.png",
                            "table2_vs_paper.md", "table2_vs_paper.tex", "table2_vs_paper.csv"])  # fmt: skip
    assert all(p.parent == runs / "report" for p in written)
    index = written[0].read_text()
    assert "![Table 2" in index and "ours minus the paper's" in index
    assert (
        "| mv - CASLIE-M mv | +0.009 | -0.055 |" in (runs / "report/table2_vs_paper.md").read_text()
    )
    plain = write_report(runs, table="a9", out=tmp_path / "a9")
    assert {p.name for p in plain} == {"report.md", "a9.md", "a9.tex", "a9.csv", "a9.png"}
