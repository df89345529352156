"""End-to-end training runs of tiny models on the shipped sample (slow: each trains for real)."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from wandb_log import read_run

from caslie.config import load_config
from caslie.data.records import DataError
from caslie.errors import NonFiniteLossError
from caslie.evaluation import score_rows
from caslie.train import run

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _config(tmp: Path, *overrides: str):
    base = [f"run.output_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'cache'}",
            f"data.votes={REPO / 'data/sample/votes'}", "trainer.enable_progress_bar=false"]  # fmt: skip
    return load_config(REPO / "configs/demo.yaml", base + list(overrides))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    # Constrained decoding: every answer parses, so every task has metrics and a confusion matrix.
    cfg = _config(
        tmp, "trainer.max_epochs=3", "logger.wandb.log_predictions=8", "eval.constrained=true"
    )
    return cfg, run(cfg)


def test_run_writes_config_metrics_predictions_and_adapter_only_checkpoints(demo_run):
    cfg, result = demo_run
    d = result.run_dir
    assert (d / "config.yaml").is_file() and (d / "data_manifest.json").is_file()
    assert result.best_checkpoint == str(d / "checkpoints" / "best.ckpt")
    ckpt = torch.load(d / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    last = torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # 168 rows, micro-batch 8, effective 16: 21 micro-batches, 11 optimiser steps per epoch, 3 epochs;
    # the cosine schedule was sized to those real steps, so it ends at zero.
    assert last["global_step"] == 33
    assert last["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)
    assert (d / "checkpoints" / "last.ckpt").is_file()
    saved = json.loads((d / "metrics.json").read_text())
    assert set(saved["metrics"]) == {"val", "test_ind", "test_ood"}
    assert (
        saved["caption_used_pct"]["test_ind"]["sa"]
        == result.data_manifest["caption_used_pct"]["test_ind"]["sa"]
    )
    for split in ("val", "test_ind", "test_ood"):
        rows = [json.loads(line) for line in (d / "predictions" / f"{split}.jsonl").open()]
        expected = result.data_manifest["rows"]
        n_split = sum(n for key, n in expected.items() if key.endswith(f"/{split}"))
        assert len(rows) == n_split == len({r["id"] for r in rows})  # every row exactly once
        assert {"prompt", "generated", "parsed", "gold", "caption_used", "votes"} <= set(rows[0])
        # The stored metrics are what the stored predictions score to.
        rescored = score_rows(
            [{k: r[k] for k in ("split", "task", "gold", "generated", "options")} for r in rows]
        )
        assert rescored[split] == saved["metrics"][split]
    assert "test_ood" in result.table and "macro_f1" in result.table
    assert all(
        m["failed"] == 0
        for split in saved["metrics"].values()
        for k, m in split.items()
        if k != "primary_mean"
    )


def test_wandb_offline_run_holds_config_metrics_and_predictions_table(demo_run):
    cfg, result = demo_run
    folders = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 1
    logged = read_run(folders[0])
    assert logged["run_id"] == (result.run_dir / "wandb_run_id").read_text()
    assert logged["config"]["optim"]["lr"] == cfg.optim.lr
    assert logged["config"]["data"]["fusion"] == "mv"
    keys = {k for row in logged["history"] for k in row}
    assert {
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "val/primary_mean",
    } <= keys
    final = result.metrics["test_ind"]["sa"]
    test_rows = [row for row in logged["history"] if "test_ind/sa/failed" in row]
    assert test_rows and test_rows[-1]["test_ind/sa/failed"] == final["failed"]
    table = next(row for row in logged["history"] if "predictions/_type" in row)
    assert table["predictions/_type"] == "table-file" and table["predictions/nrows"] == 3 * 8
    table_json = json.loads((folders[0] / "files" / table["predictions/path"]).read_text())
    assert "captions" in table_json["columns"] and "votes" in table_json["columns"]
    # The run file shows images as "Image"; the table's artifact carries the image files.
    artifact = next(a for a in logged["artifacts"] if a["type"] == "run_table")
    assert "predictions.table.json" in artifact["paths"]
    assert any(p.endswith(".png") for p in artifact["paths"])  # the product images travel with it
    assert {
        f"confusion/test_ind/{t}_table/_type" for t in ("ap", "cc", "prp", "psi", "mpc", "sa", "sr")
    } <= keys
    assert (
        logged["summary"]["data/caption_used_pct/test_ind/sa"]
        == result.data_manifest["caption_used_pct"]["test_ind"]["sa"]
    )


def test_export_merges_the_adapter(demo_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from caslie.export import export_merged, load_adapted
    from caslie.models.lora import load_base_model

    cfg, result = demo_run
    out = export_merged(result.run_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    adapted, tokenizer = load_adapted(result.run_dir)
    base = load_base_model(cfg.model, tokenizer).eval()
    ids = torch.tensor([tokenizer("Is the claw hammer forged in one piece?")["input_ids"]])
    with torch.no_grad():
        m, a, b = (x(input_ids=ids).logits for x in (merged, adapted, base))
    assert torch.allclose(m, a, atol=1e-4)
    assert not torch.allclose(m, b, atol=1e-3)


class CrashAt(L.Callback):
    """Raise before the batch that would make optimiser step ``step + 1`` (a preemption)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("preempted")


def _adapter(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    common = ["data.tasks=sa", "optim.effective_batch_size=4", "optim.micro_batch_size=4", "trainer.max_epochs=2",
              "trainer.checkpoint_every_n_steps=3", "data.eval_splits=[val]"]  # fmt: skip
    straight = run(_config(tmp_path, "run.name=straight", *common))
    with pytest.raises(RuntimeError, match="preempted"):
        run(_config(tmp_path, "run.name=crashed", *common), callbacks=[CrashAt(5)])
    crashed_dir = tmp_path / "runs" / "crashed"
    assert _adapter(crashed_dir)["global_step"] == 3
    resumed = run(_config(tmp_path, "run.name=crashed", "trainer.ckpt_path=last", *common))
    a, b = _adapter(straight.run_dir), _adapter(resumed.run_dir)
    assert a["global_step"] == b["global_step"] == 12
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.allclose(a["state_dict"][key], b["state_dict"][key], atol=1e-6), key
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]
    assert resumed.metrics == straight.metrics
    run_ids = {read_run(f)["run_id"] for f in (crashed_dir / "wandb").glob("offline-run-*")}
    assert run_ids == {(crashed_dir / "wandb_run_id").read_text()}  # the same W&B run, continued


def test_non_finite_loss_stops_with_advice_and_saves_state(tmp_path):
    cfg = _config(tmp_path, "data.tasks=sa", "optim.lr=1e30", "trainer.gradient_clip_val=null",
                  "logger.wandb.mode=disabled", "trainer.num_sanity_val_steps=0")  # fmt: skip
    with pytest.raises(NonFiniteLossError, match="Lower optim.lr"):
        run(cfg)
    assert list((tmp_path / "runs" / "demo" / "checkpoints").glob("nonfinite-step*.ckpt"))


def test_empty_eval_split_fails_before_training(tmp_path):
    cfg = _config(tmp_path, "data.tasks=psi", "logger.wandb.mode=disabled")
    with pytest.raises(
        DataError, match=r"\['test_ood'\] have no rows .* data.eval_splits=\[val,test_ind\]"
    ):
        run(cfg)
    assert not (tmp_path / "runs" / "demo" / "checkpoints").exists()


def test_missing_local_model_path_is_named(tmp_path):
    cfg = _config(tmp_path, "model.name_or_path=./no/such/model", "logger.wandb.mode=disabled")
    with pytest.raises(FileNotFoundError, match="'./no/such/model' does not exist"):
        run(cfg)


def test_ddp_on_two_cpu_processes_scores_every_row_once_and_opens_one_wandb_run(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/demo.yaml", f"run.output_dir={tmp_path}",
         f"data.cache_dir={tmp_path / 'cache'}", "trainer.devices=2", "trainer.strategy=ddp",
         "optim.micro_batch_size=4", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MEMBER: 2/2" in out.stderr
    run_dir = tmp_path / "demo"
    manifest = json.loads((run_dir / "data_manifest.json").read_text())
    for split in ("val", "test_ind", "test_ood"):
        ids = [
            json.loads(line)["id"] for line in (run_dir / "predictions" / f"{split}.jsonl").open()
        ]
        expected = sum(n for key, n in manifest["rows"].items() if key.endswith(f"/{split}"))
        assert len(ids) == len(set(ids)) == expected
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
