"""CaslieModule: tables bound from the datamodule in setup, evaluation rows scored by the base hooks."""

import lightning as L

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
