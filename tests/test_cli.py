import json
import subprocess
import sys
from pathlib import Path

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
