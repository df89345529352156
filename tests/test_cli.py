"""The ``caslie`` console script: inspect and evaluate."""

import json
import random
import subprocess
import sys
from pathlib import Path

from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from caslie.cli import main as caslie_main
from caslie.config import DEFAULT_SPLIT_MAP
from caslie.data.records import load_gold_rows
from caslie.parsing import parse_paper
from caslie.tasks import TASKS

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
    out = tmp_path / "new-folder" / "metrics.json"
    code = caslie_main(["evaluate", "--data", str(data), "--predictions", str(tmp_path / "preds.json"),
                        "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())  # these values need no rounding
    per_task = [m for split in printed.values() for m in split.values()]
    assert set(printed) <= {"test_ind", "test_ood"}
    total = sum(m["n"] + m["failed"] for m in per_task)
    assert total == len(rows) and sum(m["failed"] for m in per_task) == 5
    for m in per_task:
        assert m[m["primary"]] == 1.0 and m["missing"] == 0  # every parsed prediction is gold


def _sklearn(task: str, golds: list[str], preds: list[str]) -> dict[str, float]:
    if task in ("ap", "psi"):
        kw = {"pos_label": "yes", "zero_division": 0}
        return {"acc": accuracy_score(golds, preds), "precision": precision_score(golds, preds, **kw),
                "recall": recall_score(golds, preds, **kw), "f1": f1_score(golds, preds, **kw)}  # fmt: skip
    if task in ("cc", "sr"):
        return {"r1": accuracy_score(golds, preds)}
    kw = {"average": "macro", "zero_division": 0}
    return {"acc": accuracy_score(golds, preds), "macro_precision": precision_score(golds, preds, **kw),
            "macro_recall": recall_score(golds, preds, **kw), "macro_f1": f1_score(golds, preds, **kw)}  # fmt: skip


def test_caslie_evaluate_scores_each_split_like_sklearn(tmp_path, sample_rows, capsys):
    rng = random.Random(3)
    rows = [dict(r) for r in sample_rows if r["split"] != "train"]
    for r in rows[::7]:
        r["images"] = "[]"  # incomplete images do not matter for scoring
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gold = load_gold_rows(str(data), DEFAULT_SPLIT_MAP)
    preds = {}
    for r in gold:
        labels = sorted({o.split(":")[0] for o in r.options} if r.options else {"yes", "no"})
        choice = rng.random()
        if choice < 0.1:
            continue  # missing
        preds[r.id] = "maybe" if choice < 0.2 else rng.choice(labels)
    lines = [json.dumps({"id": i, "prediction": p}) for i, p in preds.items()]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "m.json"
    args = ["evaluate", "--data", str(data), "--predictions", str(tmp_path / "p.jsonl")]
    assert caslie_main([*args, "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    printed = json.loads(capsys.readouterr().out)
    assert set(saved) == {"val", "test_ind", "test_ood"}
    for split, per_task in saved.items():
        for task, m in per_task.items():
            mine = [r for r in gold if r.split == split and r.task == task]
            valid = {r.output for r in mine}
            parsed = [(r.output, parse_paper(preds[r.id], valid)) for r in mine if r.id in preds]
            kept = [(g, p) for g, p in parsed if p is not None]
            assert m["missing"] == sum(r.id not in preds for r in mine)
            assert m["failed"] == len(parsed) - len(kept) and m["n"] == len(kept)
            want = _sklearn(task, [g for g, _ in kept], [p for _, p in kept])
            for name, value in want.items():
                assert abs(m[name] - value) <= 1e-12, (split, task, name)
                assert printed[split][task][name] == round(m[name], 4)
            assert m["primary"] == TASKS[task].primary
    assert caslie_main([*args, "--split", "test"]) == 0  # the dataset's name for test IND
    assert json.loads(capsys.readouterr().out) == printed["test_ind"]
    assert caslie_main([*args, "--split", "train"]) == 2
    assert "splits present: val, test_ind, test_ood" in capsys.readouterr().err


def test_caslie_evaluate_rejects_misaligned_predictions(tmp_path, sample_rows, capsys):
    data = tmp_path / "rows.json"
    data.write_text(json.dumps(sample_rows[:5]))
    (tmp_path / "p.json").write_text(json.dumps(["yes"] * 4))
    assert (
        caslie_main(["evaluate", "--data", str(data), "--predictions", str(tmp_path / "p.json")])
        == 2
    )
    assert "4 predictions for 5 rows" in capsys.readouterr().err


def test_vote_dry_run_prints_each_prompt_per_voter_as_the_voter_receives_it(tmp_path, capsys):
    args = ["vote", "--config", "configs/cqe/demo.yaml", f"data.votes={tmp_path / 'v'}", "--dry-run",
            "--tasks", "prp", "sa", "--splits", "val", "--limit", "2"]  # fmt: skip
    assert caslie_main(args) == 0
    items = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    voters = ["tiny-llama", "tiny-mistral", "tiny-llava"]
    assert len(items) == 3 * 3 * 2  # (2 prp rows x 2 images + 2 sa rows) x 3 voters
    assert [i["voter"] for i in items[::6]] == voters
    for item in items:
        assert set(item) == {
            "id",
            "task",
            "split",
            "image_index",
            "voter",
            "caption",
            "prompt",
            "chat",
        }
        assert item["prompt"].endswith("Only output yes or no.") and item["prompt"] in item["chat"]
        assert ("You are a helpful AI assistant." in item["chat"]) is (
            item["voter"] != "tiny-llava"
        )
    assert not (tmp_path / "v").exists()  # nothing was voted


def test_caption_dry_run_prints_the_reference_prompt_per_image(tmp_path, capsys):
    args = ["caption", "--config", "configs/caption/demo.yaml", f"data.captions={tmp_path / 'c'}",
            "--dry-run", "--tasks", "sr", "--splits", "test_ind", "--limit", "1"]  # fmt: skip
    assert caslie_main(args) == 0
    items = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert items and [i["image_index"] for i in items] == list(range(len(items)))
    for item in items:  # tiny:llava is a LLaVA-1.5-style model: the reference's raw format
        assert item["prompt"].startswith("Please generate an informative caption for the product")
        assert item["chat"] == f"USER: <image>\n{item['prompt']} ASSISTANT:"
    assert caslie_main([*args, "--format", "text"]) == 0
    assert capsys.readouterr().out.count("=== ") == len(items)
    assert not (tmp_path / "c").exists()
