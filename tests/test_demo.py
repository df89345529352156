"""The offline demo (``make demo``): the shipped demo grid on synthetic rows, scored on every task,
with MV ahead of text only where only the caption carries the label, resumable, and reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, demo_grid

from caslie.render import write_report
from caslie.report import collect
from caslie.tasks import TASK_CODES

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CASLIE = str(Path(sys.executable).parent / "caslie")


def _mean(per_task: dict[str, float | None]) -> float:
    return sum(v or 0.0 for v in per_task.values()) / len(per_task)


def test_the_demo_grid_shows_captions_matter_resumes_and_reports(tmp_path):
    grid = demo_grid(tmp_path)
    first = subprocess.run([CASLIE, "grid", str(grid)], cwd=REPO, capture_output=True, text=True,
                           timeout=900)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    root = tmp_path / "runs" / "demo"

    for run in ("text", "uia", "mv"):  # every task is scored: every answer parses
        metrics = json.loads((root / run / "metrics.json").read_text())["metrics"]
        for split in ("test_ind", "test_ood"):
            for task, m in metrics[split].items():
                if task in TASK_CODES:
                    assert m["failed"] == 0 and m[m["primary"]] is not None, (run, split, task)

    runs, layout = collect(root)
    assert layout == "table2" and [r.name for r in runs] == ["text", "uia", "mv"]
    by_name = {r.name: r for r in runs}
    for split in ("ind", "ood"):
        text = by_name["text"].slices["caption_dependent"][split]
        mv = by_name["mv"].slices["caption_dependent"][split]
        assert _mean(mv) > _mean(text) + 0.1, (split, mv, text)

    (root / "text" / "status.json").unlink()  # as if the grid had been killed during this run
    again = subprocess.run([CASLIE, "grid", str(grid)], cwd=REPO, capture_output=True, text=True,
                           timeout=900)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 ran, 2 had finished" in again.stdout

    written = {p.name for p in write_report(root, paper=True)}
    assert {"table2.md", "table2.tex", "table2.csv", "table2.png", "table2_vs_paper.md",
            "table2_caption_dependent.md", "table2_caption_dependent.png"} <= written  # fmt: skip
