"""FashionCLIPModule on tiny:clip: heads, option scoring, truncation counting, image masking."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, write_jsonl
from conftest import clip_config as _cfg
from transformers import AutoProcessor

from caslie.models.fashionclip import FashionCLIPModule
from caslie.tiny import ensure_tiny
from datamodules.clip import CLIPDataModule


@pytest.fixture(scope="module")
def processor():
    return AutoProcessor.from_pretrained(ensure_tiny("clip"))


def _module_and_batch(tmp_path, processor, *overrides, split="test_ind"):
    """A module bound to the datamodule's labels, and one batch holding the whole split."""
    cfg = _cfg(tmp_path, *overrides)
    dm = CLIPDataModule(
        cfg.data, processor.tokenizer, processor.image_processor, 8, 128, max_tokens=77
    )
    dm.setup("test")
    batch = next(iter(dm.eval_dataloader(split)))  # 128 rows: every task in one batch
    module = FashionCLIPModule(cfg)
    module.bind(dm)
    module.configure_model()
    return module.eval(), batch, dm


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
