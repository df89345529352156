"""The ``caslie`` console script: inspect and evaluate."""

import json
import subprocess
import sys
from pathlib import Path

from caslie.cli import main as caslie_main

REPO = Path(__file__).resolve().parents[1]


def _caslie(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "caslie.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_inspect_prints_fused_prompts_with_votes(tmp_path):
    out = _caslie(
        "inspect", "--config", "configs/demo.yaml", "--n", "2", f"data.cache_dir={tmp_path}"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("[/INST] ### Response:\n") == 14  # 2 rows x 7 tasks
    assert "product information extracted from image" in out.stdout
    assert "votes: llama-3.2-3b-instruct=" in out.stdout
    assert "caption used %" in out.stdout


def test_inspect_jsonl_with_overrides(tmp_path):
    out = _caslie("inspect", "--config", "configs/demo.yaml", "--n", "3", "--format", "jsonl", "--split", "test_ood",
                  "--data.fusion=none", "data.tasks=[sa,sr]")  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 6
    assert {r["task"] for r in rows} == {"sa", "sr"} and {r["split"] for r in rows} == {"test_ood"}
    assert set(rows[0]) >= {"id", "task", "split", "prompt", "target"}
    assert all("extracted from image" not in r["prompt"] for r in rows)


def test_config_typo_exits_2_with_a_suggestion():
    out = _caslie("inspect", "--config", "configs/demo.yaml", "data.fuson=mv")
    assert out.returncode == 2
    assert "did you mean 'data.fusion'" in out.stderr
    assert "Traceback" not in out.stderr


def test_caslie_evaluate_scores_a_predictions_file(tmp_path, sample_rows, capsys):
    rows = [r for r in sample_rows if r["task"] in ("answerability_prediction", "sentiment_analysis")
            and r["split"] == "test"][:20]  # fmt: skip
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(rows))
    preds = [r["output"] if i % 4 else "maybe" for i, r in enumerate(rows)]
    (tmp_path / "preds.json").write_text(json.dumps(preds))
    out = tmp_path / "metrics.json"
    code = caslie_main(["evaluate", "--data", str(data), "--predictions", str(tmp_path / "preds.json"),
                        "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    total = sum(m["n"] + m["failed"] for m in printed.values())
    assert total == len(rows) and sum(m["failed"] for m in printed.values()) == 5
    for m in printed.values():
        assert m[m["primary"]] == 1.0  # every parsed prediction is the gold label


def test_caslie_evaluate_rejects_misaligned_predictions(tmp_path, sample_rows, capsys):
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(sample_rows[:5]))
    (tmp_path / "p.json").write_text(json.dumps(["yes"] * 4))
    assert (
        caslie_main(["evaluate", "--data", str(data), "--predictions", str(tmp_path / "p.json")])
        == 2
    )
    assert "4 predictions for 5 rows" in capsys.readouterr().err
