"""Ablation grids: expansion, a local run that a rerun finishes without repeating, and an error
for every malformed grid."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, fusion_grid, write_grid

from caslie.errors import ConfigError
from caslie.grid import load_grid

CASLIE = str(Path(sys.executable).parent / "caslie")


def test_the_shipped_grids_expand_to_the_papers_runs():
    assert [s.name for s in load_grid(REPO / "configs/grids/demo.yaml").steps] == [
        "text",
        "uia",
        "mv",
    ]
    table2 = load_grid(REPO / "configs/grids/table2.yaml")
    assert len(table2.steps) == 9 and {s.stage for s in table2.steps} == {"train"}
    llama2 = next(s for s in table2.steps if s.name == "llama2_13b-mv")
    assert "data.prompt_template=alpaca" in llama2.argv and "data.fusion=mv" in llama2.argv
    assert llama2.argv[-1] == "run.name=llama2_13b-mv" and "--resume" in llama2.argv
    assert len(load_grid(REPO / "configs/grids/table3.yaml").steps) == 8
    a9 = load_grid(REPO / "configs/grids/a9.yaml")
    assert len(a9.steps) == 8


def test_a_chain_captions_then_votes_on_those_captions_then_trains_on_both():
    grid = load_grid(REPO / "configs/grids/table4.yaml")
    steps = {s.name: s for s in grid.steps}
    caption, vote, train = steps["llava15.caption"], steps["llava15.vote"], steps["llava15"]
    captions = f"data.captions={grid.root / 'llava15' / 'captions'}"
    votes = f"data.votes={grid.root / 'llava15' / 'votes'}"
    assert caption.argv[1] == "caption" and captions in caption.argv and caption.after == ()
    assert vote.argv[1] == "vote" and captions in vote.argv and votes in vote.argv
    assert "data.caption_model=llava-hf/llava-1.5-7b-hf" in vote.argv
    assert vote.after == ("llava15.caption",) and train.after == ("llava15.vote",)
    assert captions in train.argv and votes in train.argv
    order = [s.name for s in grid.steps]
    assert order.index("llava15.caption") < order.index("llava15.vote") < order.index("llava15")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("axes:\n  fusion:\n    mv: [data.fuson=mv]\n", r"run mv: unknown config key 'data.fuson'"),
        ("axes:\n  fusion: [a, b]\n", "axes.fusion must map values"),
        ("axes:\n  fusion:\n    'a b': [data.fusion=mv]\n", "letters, digits"),
        ("colour: red\n", r"unknown keys \['colour'\]"),
        ("chains:\n  x:\n    caption: {config: nope.yaml}\n", "config file not found"),
        ("overrides: data.fusion=mv\n", "overrides must be a list"),
    ],
)
def test_a_malformed_grid_is_one_error_naming_the_file(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        load_grid(write_grid(tmp_path, body))


@pytest.mark.slow
@pytest.mark.integration
def test_a_grid_runs_here_and_a_rerun_runs_only_what_is_missing(tmp_path):
    path = fusion_grid(tmp_path, "g")
    first = subprocess.run([CASLIE, "grid", str(path)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=900)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 ran, 0 had finished" in first.stdout
    root = tmp_path / "runs" / "g"
    identities = {r: json.loads((root / r / "metrics.json").read_text())["identity"]
                  for r in ("text", "mv")}  # fmt: skip
    assert identities["text"]["fusion"] == "none" and identities["mv"]["fusion"] == "mv"
    mv_before = (root / "mv" / "metrics.json").stat().st_mtime_ns

    (root / "text" / "status.json").unlink()  # as if the grid had died during this run
    again = subprocess.run([CASLIE, "grid", str(path)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=900)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "g: mv: already finished, skipped" in again.stdout
    assert "1 ran, 1 had finished" in again.stdout
    assert (root / "mv" / "metrics.json").stat().st_mtime_ns == mv_before
    assert (root / "text" / "status.json").is_file()

    dry = subprocess.run([CASLIE, "grid", str(path), "--dry-run"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert dry.stdout.count(": finished") == 2
