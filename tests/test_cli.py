"""The ``caslie`` console script: inspect and evaluate."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_jsonl
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from caslie.cli import main as caslie_main
from caslie.config import DEFAULT_SPLIT_MAP
from caslie.data.records import load_gold_rows
from caslie.metrics import DECIMALS
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
    assert printed == json.loads(out.read_text())  # printed as written
    coverage = printed.pop("coverage")
    per_task = [m for split in printed.values() for m in split.values()]
    assert set(printed) <= {"test_ind", "test_ood"}
    total = sum(m["n"] + m["failed"] for m in per_task)
    assert total == len(rows) and sum(m["failed"] for m in per_task) == 5
    for m in per_task:
        assert m[m["primary"]] == 1.0 and m["missing"] == 0  # every parsed prediction is gold
    assert coverage == {"rows": 20, "predicted": 20, "missing": 0, "duplicate": 0, "unknown": 0,
                        "failed": 5}  # fmt: skip


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
    args = ["evaluate", "--data", str(data), "--predictions", str(tmp_path / "p.jsonl"),
            "--allow-missing"]  # fmt: skip
    assert caslie_main([*args, "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    printed = json.loads(capsys.readouterr().out)
    coverage = saved.pop("coverage")
    assert printed.pop("coverage") == coverage
    assert coverage["missing"] == len(gold) - len(preds) > 0
    assert coverage["predicted"] == len(preds) and coverage["rows"] == len(gold)
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
                # Written to DECIMALS decimals: within half a unit of the last of sklearn's value.
                assert abs(m[name] - value) <= 0.5 * 10**-DECIMALS + 1e-12, (split, task, name)
                assert m[name] == round(m[name], DECIMALS)
                assert printed[split][task][name] == m[name]  # printed as written
            assert m["primary"] == TASKS[task].primary
    assert caslie_main([*args, "--split", "test"]) == 0  # the dataset's name for test IND
    only = json.loads(capsys.readouterr().out)
    assert only.pop("coverage")["rows"] == sum(r.split == "test_ind" for r in gold)
    assert only == printed["test_ind"]
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


def _evaluate(tmp_path, rows, predictions, *extra: str) -> list[str]:
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    path = tmp_path / "p.jsonl"
    if isinstance(predictions, bytes):
        path.write_bytes(predictions)
    else:
        path.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    return ["evaluate", "--data", str(data), "--predictions", str(path), *extra]


def _eval_rows(sample_rows, n=8):
    return [
        dict(r, id=f"r{i}") for i, r in enumerate(r for r in sample_rows if r["split"] == "test")
    ][:n]


def test_caslie_evaluate_refuses_predictions_for_half_the_rows(tmp_path, sample_rows, capsys):
    rows = _eval_rows(sample_rows)
    preds = [{"id": r["id"], "prediction": r["output"]} for r in rows[:4]]
    args = _evaluate(tmp_path, rows, preds)
    assert caslie_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "4 of 8 rows have no prediction (e.g. row r4" in err
    assert "--allow-missing" in err and str(tmp_path / "p.jsonl") in err
    out = tmp_path / "m.json"
    assert caslie_main([*args, "--allow-missing", "--out", str(out)]) == 0
    coverage = json.loads(out.read_text())["coverage"]
    assert coverage == {"rows": 8, "predicted": 4, "missing": 4, "duplicate": 0, "unknown": 0,
                        "failed": 0}  # fmt: skip


def test_caslie_evaluate_refuses_an_empty_predictions_file(tmp_path, sample_rows, capsys):
    args = _evaluate(tmp_path, _eval_rows(sample_rows), b"")
    for extra in ([], ["--allow-missing"]):
        assert caslie_main([*args, *extra]) == 2
        assert "p.jsonl: holds no predictions" in capsys.readouterr().err


def test_caslie_evaluate_counts_duplicate_unknown_and_failed_apart(tmp_path, sample_rows, capsys):
    rows = _eval_rows(sample_rows, 4)
    preds = [{"id": r["id"], "prediction": r["output"]} for r in rows]
    preds[1]["prediction"] = "not an answer"
    preds += [{"id": "r0", "prediction": "overwrites?"}, {"id": "nobody", "prediction": "yes"}]
    args = _evaluate(tmp_path, rows, preds)
    assert caslie_main(args) == 2
    err = capsys.readouterr().err
    assert "1 prediction ids are not rows of the data (e.g. 'nobody' at " in err
    assert (
        f"1 predictions repeat an id predicted before (e.g. 'r0' at {tmp_path / 'p.jsonl'}:1 and "
        in err
    )
    assert caslie_main([*args, "--allow-missing"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["coverage"] == {"rows": 4, "predicted": 4, "missing": 0, "duplicate": 1,
                                   "unknown": 1, "failed": 1}  # fmt: skip
    per_task = [
        m for split, tasks in printed.items() if split != "coverage" for m in tasks.values()
    ]
    assert sum(m["n"] for m in per_task) == 3  # the first prediction of r0 (its gold) is kept


@pytest.mark.parametrize(
    ("content", "where", "problem"),
    [
        (
            b'{"id": "r0", "prediction": "yes"}\n{"id": "r1", "prediction": "n\xe9"}\n',
            ":2",
            "not UTF-8",
        ),
        (b'{"id": "r0", "prediction": "yes"}\n{"id": "r1", \n', ":2", "not valid JSON"),
        (
            b'{"id": "r0", "prediction": 3}\n',
            ":1",
            "'prediction' must be a string or null, got int",
        ),
        (b'{"id": ["r0"], "prediction": "yes"}\n', ":1", "'id' must be a string or integer"),
        (
            b'{"id": "r0", "prediction": "yes"}\n"yes"\n',
            ":2",
            "expected a JSON object with 'id' and 'prediction'",
        ),
        (b"[" * 100000 + b"]" * 100000, "", "nested too deeply"),
        (b'["yes", {"a": 1}, "no", "yes", "no", "yes", "no", "yes"]', "[1]", "got dict"),
        (b'{"id": "r0", "prediction": ' + b"9" * 5000 + b"}\n", ":1", "not valid JSON"),
    ],
)
def test_bad_predictions_files_are_one_line_naming_file_and_line(
    tmp_path, sample_rows, capsys, content, where, problem
):
    assert caslie_main(_evaluate(tmp_path, _eval_rows(sample_rows), content)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"caslie: error: {tmp_path / 'p.jsonl'}{where}")
    assert problem in err


def test_inspect_lists_the_rows_it_skipped(tmp_path, sample_rows, capsys):
    rows = [r for r in sample_rows if r["split"] == "train"][:6]
    rows[2] = dict(rows[2], output=None)
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    args = ["inspect", "--config", "configs/demo.yaml", f"data.source={path}", "data.fusion=none",
            "data.on_error=skip", f"data.cache_dir={tmp_path}"]  # fmt: skip
    assert caslie_main(args) == 0
    out = capsys.readouterr().out
    assert "skipped rows (first 1 of 1):" in out and f"{path}:3: output: missing" in out
