"""CaslieModule: tables bound from the datamodule in setup, evaluation rows scored by the base hooks."""

import lightning as L
import torch

from caslie.models.lora import LoRAInstructModule
from datamodules.mmec import MMECDataModule


def test_the_module_takes_its_tables_from_the_datamodule_and_the_data_is_built_once(
    sample_config, tokenizer
):
    cfg = sample_config("model.name_or_path=tiny:mistral", "data.tasks=[sa,cc]", "data.max_length=512",
                        "optim.effective_batch_size=8", "optim.micro_batch_size=8")  # fmt: skip
    dm = MMECDataModule(cfg.data, tokenizer, 8, 32, generate_on_val=True)
    module = LoRAInstructModule(cfg, tokenizer)
    assert module._tries == {} and dm.built is None  # nothing is read before the Trainer runs
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_train_batches=1, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, use_distributed_sampler=False)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    assert dm.built.from_cache  # prepare_data built the cache; setup only opened it
    assert set(module._tries) == set(module._budget) == set(dm.labels) == {"sa", "cc"}
    val = module.eval_results["metrics"]["val"]
    assert set(val) <= {"sa", "cc", "primary_mean"} and len(val) > 1
    assert {r["split"] for r in module.eval_results["rows"]} == {"val"}
    assert "val/primary_mean" in trainer.callback_metrics or val["primary_mean"] is None


def test_resuming_on_changed_rows_stops_saying_what_changed_unless_allowed(
    tmp_path, sample_rows, caplog
):
    import json

    import pytest
    from conftest import CrashAt, demo_config, write_jsonl

    from caslie.errors import CheckpointError
    from train import run

    rows = [r for r in sample_rows if r["task"] == "sentiment_analysis"]
    source = write_jsonl(tmp_path / "rows" / "rows.jsonl", rows)
    common = [f"data.source={source}", "data.tasks=sa", "data.fusion=none", "trainer.max_epochs=1",
              "optim.effective_batch_size=4", "optim.micro_batch_size=4",
              "trainer.checkpoint_every_n_steps=2", "logger.wandb.mode=disabled"]  # fmt: skip
    with pytest.raises(RuntimeError, match="preempted"):
        run(demo_config(tmp_path, *common), callbacks=[CrashAt(3)])
    ckpt = torch.load(tmp_path / "runs/demo/checkpoints/last.ckpt", weights_only=True)
    assert set(ckpt["caslie"]["data"]) >= {"source", "config", "tokenizer"}
    changed = [dict(r, output=r["output"]) for r in rows]
    changed[0]["instruction"] += " (edited)"
    source.write_text("".join(json.dumps(r) + "\n" for r in changed))
    with pytest.raises(
        CheckpointError,
        match=r"the data changed .*\(the rows \(data.source\)\).*data.allow_changed=true",
    ):
        run(demo_config(tmp_path, *common, "trainer.ckpt_path=last"))
    result = run(
        demo_config(tmp_path, *common, "trainer.ckpt_path=last", "data.allow_changed=true")
    )
    assert result.metrics and "resuming on changed data (the rows (data.source))" in caplog.text
