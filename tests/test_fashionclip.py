"""FashionCLIP baseline on tiny:clip: heads, option scoring, truncation counting, image masking."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_jsonl
from transformers import AutoProcessor

from caslie.config import load_config
from caslie.models.fashionclip import FashionCLIPModule
from caslie.offline import ensure_tiny
from caslie.train import run
from datamodules.clip import CLIPDataModule, clip_example

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp: Path, *overrides: str):
    return load_config(REPO / "configs/fashionclip.yaml", [
        "model.name_or_path=tiny:clip", "data.source=sample", f"run.output_dir={tmp / 'runs'}",
        "data.num_workers=0", "trainer.accelerator=cpu", "logger.wandb.mode=disabled",
        "trainer.enable_progress_bar=false", "optim.effective_batch_size=16", "optim.micro_batch_size=16",
        *overrides,
    ])  # fmt: skip


@pytest.fixture(scope="module")
def processor():
    return AutoProcessor.from_pretrained(ensure_tiny("clip"))


def _module_and_batch(tmp_path, processor, *overrides, split="test_ind", task=None):
    cfg = _cfg(tmp_path, *overrides)
    dm = CLIPDataModule(
        cfg.data, processor.tokenizer, processor.image_processor, 8, 64, max_tokens=77
    )
    loader = dm._loader(split, 128, False)  # the whole split: every task in one batch
    batch = next(iter(loader))
    module = FashionCLIPModule(cfg, dm.label_index).eval()
    return module, batch, dm


def test_examples_lay_out_each_task(sample_rows):
    from caslie.config import DataConfig
    from caslie.data.records import load_records

    records, _ = load_records(DataConfig(source="sample"), splits=["train"])
    by_task = {r.task: r for r in records}
    prp = clip_example(by_task["prp"])
    assert len(prp["texts"]) == 2 and len(prp["images"]) == 2
    cc = clip_example(by_task["cc"])
    assert cc["options"][0] == by_task["cc"].options[0].split(": ", 1)[1]
    sr = clip_example(by_task["sr"])
    n_hist = len(by_task["sr"].input)
    assert len(sr["texts"]) == len(sr["images"]) == n_hist
    assert len(sr["option_texts"]) == len(sr["option_images"]) == len(by_task["sr"].options)


def test_each_head_type_gives_logits_over_its_labels(tmp_path, processor):
    module, batch, dm = _module_and_batch(tmp_path, processor)
    with torch.no_grad():
        logits = module(batch)
    seen = set()
    for row, lg in zip(batch["rows"], logits, strict=True):
        assert lg.shape == (len(row["labels"]),)
        seen.add(row["task"])
    assert seen == {"ap", "cc", "prp", "psi", "mpc", "sa", "sr"}
    dim = module.clip.config.projection_dim
    assert module.heads["prp"].in_features == 4 * dim and module.heads["sa"].in_features == 2 * dim
    assert module.heads["sa"].out_features == len(dm.label_index["sa"]) == 5
    assert set(module.heads) == {"ap", "prp", "psi", "mpc", "sa"}  # cc and sr score options instead


def test_option_scoring_is_scaled_cosine_similarity(tmp_path, processor):
    module, batch, _ = _module_and_batch(tmp_path, processor)
    with torch.no_grad():
        text, image = module.embed(batch)
        logits = module(batch)
    scale = module.clip.logit_scale.exp()
    for row, lg in zip(batch["rows"], logits, strict=True):
        if row["task"] == "cc":
            query = F.normalize((text[row["texts"][0]] + image[row["images"][0]]) / 2, dim=-1)
            expected = scale * torch.stack([text[j] for j in row["option_texts"]]) @ query
        elif row["task"] == "sr":
            items = [
                F.normalize((text[t] + image[i]) / 2, dim=-1)
                for t, i in zip(row["texts"], row["images"], strict=True)
            ]
            query = F.normalize(torch.stack(items).mean(0), dim=-1)
            opts = [F.normalize((text[t] + image[i]) / 2, dim=-1)
                    for t, i in zip(row["option_texts"], row["option_images"], strict=True)]  # fmt: skip
            expected = scale * torch.stack(opts) @ query
        else:
            continue
        assert torch.allclose(lg, expected, atol=1e-5)


def test_long_texts_are_truncated_and_counted_missing_images_masked(
    tmp_path, processor, sample_rows
):
    rows = [
        dict(r) for r in sample_rows if r["task"] == "sentiment_analysis" and r["split"] == "test"
    ][:3]
    rows[0]["input"] = json.dumps({"review": "solid grip and sharp blade " * 40})
    rows[1]["images"] = json.dumps(["images/gone.png"])
    rows[2]["images"] = json.dumps(["../outside.png"])
    data = write_jsonl(tmp_path / "rows" / "rows.jsonl", rows)
    import shutil

    shutil.copytree(REPO / "data/sample/images", tmp_path / "rows" / "images")
    module, batch, _ = _module_and_batch(tmp_path, processor, f"data.source={data}", "data.tasks=[sa]",
                                         "data.eval_splits=[test_ind]")  # fmt: skip
    assert batch["truncated_texts"] == 1 and batch["input_ids"].shape[1] == 77
    assert batch["missing_images"] == 2 and batch["image_mask"].tolist() == [True, False, False]
    with torch.no_grad():
        before = module(batch)
        batch["pixel_values"][1:] = torch.randn_like(
            batch["pixel_values"][1:]
        )  # masked: must not matter
        after = module(batch)
        _, image = module.embed(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert image[1:].abs().sum() == 0  # a missing image is a zero vector in the head's input


def test_training_steps_fit_a_batch(tmp_path, processor):
    module, batch, _ = _module_and_batch(tmp_path, processor, split="train")
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, _ = module._loss(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


@pytest.mark.slow
@pytest.mark.integration
def test_train_py_fashionclip_all_tasks_and_one_task(tmp_path):
    result = run(_cfg(tmp_path, "optim.lr=1e-3", "trainer.max_epochs=2"))
    for split, tasks in (("test_ind", 7), ("test_ood", 5), ("val", 7)):
        per_task = result.metrics[split]
        assert len([t for t in per_task if t != "primary_mean"]) == tasks
        assert all(m["failed"] == 0 for t, m in per_task.items() if t != "primary_mean")
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert saved["metrics"] == result.metrics
    assert (result.run_dir / "predictions" / "test_ood.jsonl").is_file()
    from caslie.config import DataConfig
    from caslie.data.records import load_records

    tokenizer = AutoProcessor.from_pretrained(ensure_tiny("clip")).tokenizer
    records, _ = load_records(DataConfig(source="sample"), splits=["val", "test_ind", "test_ood"])
    texts = [
        t
        for r in records
        for key in ("texts", "options", "option_texts")
        for t in clip_example(r).get(key, [])
    ]
    too_long = sum(len(ids) > 77 for ids in tokenizer(texts)["input_ids"])
    assert saved["counts"] == {"truncated_texts": too_long, "missing_images": 0}
    single = run(_cfg(tmp_path, "run.name=fc_sa", "data.tasks=[sa]", "trainer.max_epochs=1"))
    assert set(single.metrics["test_ind"]) == {"sa", "primary_mean"}


@pytest.mark.slow
@pytest.mark.integration
def test_the_shipped_config_with_tiny_clip_runs_offline_on_the_sample(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/fashionclip.yaml", "model.name_or_path=tiny:clip",
         f"run.output_dir={tmp_path}", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "data.source=NingLab/MMECInstruct -> sample" in out.stderr
    metrics = json.loads((tmp_path / "fashionclip" / "metrics.json").read_text())["metrics"]
    assert {t for t in metrics["test_ind"] if t != "primary_mean"} == {
        "ap",
        "cc",
        "prp",
        "psi",
        "mpc",
        "sa",
        "sr",
    }
    assert list((tmp_path / "fashionclip" / "wandb").glob("offline-run-*"))


@pytest.mark.slow
@pytest.mark.integration
def test_fashionclip_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    import lightning as L

    class CrashAt(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 5:
                raise RuntimeError("preempted")

    common = ["data.tasks=[sa,cc]", "optim.effective_batch_size=8", "optim.micro_batch_size=8",
              "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=3", "optim.lr=1e-3"]  # fmt: skip
    straight = run(_cfg(tmp_path, "run.name=straight", *common))
    with pytest.raises(RuntimeError, match="preempted"):
        run(_cfg(tmp_path, "run.name=crashed", *common), callbacks=[CrashAt()])
    resumed = run(_cfg(tmp_path, "run.name=crashed", "trainer.ckpt_path=last", *common))
    a, b = (
        torch.load(r.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        for r in (straight, resumed)
    )
    assert a["global_step"] == b["global_step"] == 12
    for key in a["state_dict"]:
        assert torch.allclose(a["state_dict"][key], b["state_dict"][key], atol=1e-6), key
    assert resumed.metrics == straight.metrics
