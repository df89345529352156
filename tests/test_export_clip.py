"""FashionCLIP export: the CLIP model, processor and heads reload to the checkpoint's outputs."""

import json

import pytest
import torch
from transformers import AutoProcessor, CLIPModel

from caslie.cli import main as caslie_main
from caslie.errors import MissingPathError
from caslie.export_clip import HEADS_SPEC, export_clip, load_heads
from caslie.models.fashionclip import FashionCLIPModule
from caslie.tiny import ensure_tiny
from datamodules.clip import CLIPDataModule


def test_load_heads_names_a_folder_that_is_no_export(tmp_path):
    with pytest.raises(MissingPathError, match=f"{tmp_path} is no FashionCLIP export"):
        load_heads(tmp_path)


def _checkpoint(result):
    return torch.load(result.run_dir / "checkpoints" / "best.ckpt", weights_only=True)


def _batch(cfg, processor):
    """The run's datamodule and one batch holding its whole IND test split (every task)."""
    dm = CLIPDataModule(
        cfg.data, processor.tokenizer, processor.image_processor, 8, 128, max_tokens=77
    )
    dm.setup("test")
    return dm, next(iter(dm.eval_dataloader("test_ind")))


def _module(cfg, label_index, clip=None, heads=None):
    """A FashionCLIPModule sized to ``label_index``; its CLIP and heads replaced when given."""
    module = FashionCLIPModule(cfg)
    module.bind_labels(label_index)
    module.configure_model()
    if clip is not None:
        module.clip, module.heads = clip, heads
    return module.eval()


@pytest.mark.slow
@pytest.mark.integration
def test_clip_export_reloads_to_the_checkpoint_loaded_module(clip_run, tmp_path):
    cfg, result = clip_run
    out = tmp_path / "clip"
    assert caslie_main(["export", str(result.run_dir), "--out", str(out)]) == 0
    ckpt = _checkpoint(result)
    reference = _module(cfg, ckpt["caslie"]["label_index"])
    reference.load_state_dict(ckpt["state_dict"])  # the way Lightning restores it
    clip = CLIPModel.from_pretrained(out).eval()
    heads, spec = load_heads(out)
    processor = AutoProcessor.from_pretrained(out)
    dm, batch = _batch(cfg, processor)
    assert {t: h["labels"] for t, h in spec["heads"].items()} == {
        t: list(index) for t, index in dm.label_index.items()
    }
    assert spec["base_model"] == "tiny:clip"
    reloaded = _module(cfg, dm.label_index, clip, heads)
    with torch.no_grad():
        expected, got = reference(batch), reloaded(batch)
    assert {row["task"] for row in batch["rows"]} == {"ap", "cc", "prp", "psi", "mpc", "sa", "sr"}
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(e, g, atol=1e-5)
    base = CLIPModel.from_pretrained(ensure_tiny("clip"))
    assert not torch.equal(base.text_projection.weight, clip.text_projection.weight)  # fine-tuned


@pytest.mark.slow
@pytest.mark.integration
def test_a_checkpoint_without_label_names_exports_the_head_sizes(clip_run, tmp_path):
    cfg, result = clip_run
    ckpt = _checkpoint(result)
    sizes = {t: len(index) for t, index in ckpt["caslie"].pop("label_index").items()}
    export_clip(cfg, ckpt, tmp_path)
    spec = json.loads((tmp_path / HEADS_SPEC).read_text())
    assert {t: (h["out_features"], h["labels"]) for t, h in spec["heads"].items()} == {
        t: (n, None) for t, n in sizes.items()
    }
    heads, _ = load_heads(tmp_path)
    for task, head in heads.items():
        assert torch.equal(head.weight, ckpt["state_dict"][f"heads.{task}.weight"])
