"""``caslie export``: merging a trained adapter into its base model."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from caslie.export import export_merged, load_adapted
from caslie.models.lora import load_base_model

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_export_merges_the_adapter(demo_run, tmp_path):
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
