"""Runs laid out as the paper's tables: Table 2's footer formulas against the paper's own numbers,
Table 3's merge of task-specific runs, the caption-dependent slice, and the paper deltas."""

import json

import pytest
from conftest import write_finished_run

from caslie.data.sources import SAMPLE_ROWS
from caslie.errors import DataError, MissingPathError
from caslie.paper import published
from caslie.report import Row, build_table, collect, improvement_rows, paper_deltas

MISTRAL = "mistralai/Mistral-7B-Instruct-v0.3"
IND = ["ap", "cc", "prp", "psi", "mpc", "sa", "sr"]
PAPER_IMPRV_OVER_BEST = [1.7, 0.8, -0.4, 17.1, 0.8, 3.8, 2.3]
PAPER_AVERAGE_IMPRV = [5.7, 11.0, 10.8, 76.6, 5.2, 23.8, 61.6]


def test_table2_footer_rows_reproduce_the_papers_from_its_own_numbers():
    rows = [r for r in published("table2") if r["split"] == "ind" and r["fusion"] != "uia"]
    as_row = [Row(r["model"], {("ind", t): r[f"{t}_{s}"] for t, s in
              zip(IND, ["f1", "r1", "mf1", "f1", "acc", "mf1", "r1"], strict=True)}) for r in rows]  # fmt: skip
    methods = [r for r in as_row if r.label.startswith("CASLIE")]
    baselines = [r for r in as_row if not r.label.startswith("CASLIE")]
    assert len(methods) == 3 and len(baselines) == 8
    over_best, average = improvement_rows(methods, baselines, [("ind", t) for t in IND])
    assert [round(over_best.cells[("ind", t)], 1) for t in IND] == PAPER_IMPRV_OVER_BEST
    assert [round(average.cells[("ind", t)], 1) for t in IND] == PAPER_AVERAGE_IMPRV
    assert over_best.label.startswith("imprv over best (%; avg: ") and over_best.footer


def _table2_runs(root):
    (root / "grid.json").write_text(json.dumps({"name": "g", "table": "table2", "runs": {
        "text": {"fusion": "text"}, "mv": {"fusion": "mv"}, "late": {"fusion": "late"}}}))  # fmt: skip
    write_finished_run(root, "mv", {"model": MISTRAL, "fusion": "mv"},
                       {"test_ind": {"ap": 0.9, "sa": 0.6}, "test_ood": {"ap": 0.8, "sa": 0.5}},
                       {"test_ind": {"ap": 60.0, "sa": 50.0}, "test_ood": {"ap": 70.0}})  # fmt: skip
    write_finished_run(root, "text", {"model": MISTRAL, "fusion": "none"},
                       {"test_ind": {"ap": 0.8, "sa": 0.6}, "test_ood": {"ap": 0.5, "sa": 0.4}})  # fmt: skip


def test_table2_lays_out_runs_in_grid_order_with_its_footer(tmp_path):
    _table2_runs(tmp_path)
    runs, table = collect(tmp_path)
    assert table == "table2" and [r.name for r in runs] == ["text", "mv"]  # grid order, not a-z
    t = build_table("table2", runs)
    assert t.columns == [("ind", "ap"), ("ind", "sa"), ("ood", "ap"), ("ood", "sa")]
    body = {r.label: r for r in t.body()}
    assert body["mv"].cells[("ood", "ap")] == 0.8 and body["mv"].paper == {"model": "CASLIE-M",
                                                                          "fusion": "mv"}  # fmt: skip
    footer = {r.label.split(" (")[0]: r for r in t.rows if r.footer}
    assert footer["imprv over best"].cells[("ind", "ap")] == pytest.approx(12.5)
    assert footer["imprv over best"].cells[("ood", "ap")] == pytest.approx(60.0)
    assert footer["imprv over best"].cells[("ind", "sa")] == pytest.approx(0.0)
    assert footer["caption used"].cells[("ind", "ap")] == 60.0
    assert footer["caption used"].cells[("ood", "sa")] is None


def test_paper_deltas_are_ours_minus_the_published_number(tmp_path):
    _table2_runs(tmp_path)
    deltas = paper_deltas(build_table("table2", collect(tmp_path)[0]))
    by_label = {r.label: r for r in deltas.rows}
    assert by_label["mv - CASLIE-M mv"].cells[("ind", "ap")] == pytest.approx(0.9 - 0.891)
    assert by_label["text - ft-Mistral-7B-v0.3 none"].cells[("ood", "sa")] == pytest.approx(
        0.4 - 0.659
    )


def test_table3_merges_one_run_per_task_into_the_task_specific_row(tmp_path):
    write_finished_run(tmp_path, "all", {"model": MISTRAL, "fusion": "mv"},
                       {"test_ind": {"ap": 0.9, "sa": 0.7}})  # fmt: skip
    write_finished_run(tmp_path, "ap", {"model": MISTRAL, "fusion": "mv", "tasks": ["ap"]},
                       {"test_ind": {"ap": 0.85}})  # fmt: skip
    write_finished_run(tmp_path, "sa", {"model": MISTRAL, "fusion": "mv", "tasks": ["sa"]},
                       {"test_ind": {"sa": 0.55}})  # fmt: skip
    t = build_table("table3", collect(tmp_path)[0])
    rows = {r.label: r for r in t.rows}
    specific = rows[f"{MISTRAL} task-specific"]
    assert specific.cells == {("ind", "ap"): 0.85, ("ind", "sa"): 0.55}
    assert specific.paper == {"size": "M", "training": "task-specific"}
    assert rows[f"{MISTRAL} generalist"].paper["training"] == "generalist"


def test_rows_flagged_caption_dependent_are_scored_on_their_own(tmp_path):
    rows = tmp_path / "rows.jsonl"
    sample = [json.loads(line) for line in
              SAMPLE_ROWS.read_text().splitlines()[:4]]  # fmt: skip
    for i, row in enumerate(sample):
        row["id"], row["caption_dependent"] = f"r{i}", i % 2 == 0
    rows.write_text("".join(json.dumps(r) + "\n" for r in sample))
    run = write_finished_run(tmp_path / "runs", "mv", {"model": MISTRAL, "fusion": "mv"},
                             {"test_ind": {"ap": 0.5}})  # fmt: skip
    (run / "config.yaml").write_text(f"data:\n  source: {rows}\n")
    (run / "predictions").mkdir()
    preds = [{"id": f"r{i}", "task": "ap", "gold": "yes", "parsed": "yes" if i % 2 == 0 else "no"}
             for i in range(4)]  # fmt: skip
    (run / "predictions" / "test_ind.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in preds)
    )
    (found,), _ = collect(tmp_path / "runs")
    assert found.slices["caption_dependent"]["ind"]["ap"] == 1.0  # r0, r2: both right
    t = build_table("table2", [found], pick="caption_dependent")
    assert t.name == "table2_caption_dependent" and t.body()[0].cells[("ind", "ap")] == 1.0


def test_no_runs_or_a_broken_metrics_file_is_a_clear_error(tmp_path):
    with pytest.raises(MissingPathError, match="no finished run"):
        collect(tmp_path)
    with pytest.raises(MissingPathError, match="not a folder"):
        collect(tmp_path / "absent")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match=r"r/metrics.json: cannot read it as JSON"):
        collect(tmp_path)
    with pytest.raises(ValueError, match="unknown report layout"):
        build_table("table9", [])
