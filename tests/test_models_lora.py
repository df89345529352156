"""LoRAInstructModule and its model: targets, gradient checkpointing, pad resizing."""

import dataclasses

import pytest
import torch

from caslie.config import ModelConfig
from caslie.errors import ConfigError
from caslie.models.lora import build_lora_model, load_base_model
from caslie.pretrained import load_tokenizer
from caslie.tiny import ensure_tiny

TINY = ModelConfig(name_or_path="tiny:mistral")


def test_missing_lora_targets_list_the_available_linear_layers(tokenizer):
    cfg = dataclasses.replace(TINY, lora_target_modules=["q_proj", "query_key_value"])
    with pytest.raises(ConfigError, match=r"\['query_key_value'\].*available: .*down_proj.*q_proj"):
        build_lora_model(cfg, tokenizer)


def test_paper_defaults_put_adapters_on_every_projection_and_the_lm_head(tokenizer):
    model = build_lora_model(TINY, tokenizer)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for target in TINY.lora_target_modules:
        assert any(f".{target}.lora_A" in n for n in trainable), target
    assert model.peft_config["default"].r == 16 and model.peft_config["default"].lora_alpha == 16


def test_gradient_checkpointing_still_trains_the_adapters(tokenizer):
    model = build_lora_model(dataclasses.replace(TINY, gradient_checkpointing=True), tokenizer)
    model.train()
    assert model.base_model.model.is_activation_checkpointing
    ids = torch.tensor([tokenizer("a cordless drill with two batteries")["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # lora_B starts at zero, so lora_A gets no gradient on the first step; lora_B must.
    grads = [p.grad for n, p in lora.items() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_tokenizer_without_pad_gets_a_distinct_one_and_the_model_grows_to_fit(tmp_path):
    folder = ensure_tiny("llama")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # no reserved pad: the last resort
        path = tmp_path / "nopad" / name
        path.write_text(path.read_text().replace("<|finetune_right_pad_id|>", "<|reserved_9|>"))
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        if (folder / f).exists():
            (tmp_path / "nopad" / f).write_bytes((folder / f).read_bytes())
    loaded = load_tokenizer(str(tmp_path / "nopad"))
    assert loaded.pad_token == "<|pad|>" and loaded.pad_token_id != loaded.eos_token_id
    cfg = ModelConfig(name_or_path=str(tmp_path / "nopad"))
    a, b = load_base_model(cfg, loaded), load_base_model(cfg, loaded)
    assert a.get_input_embeddings().weight.shape[0] == len(loaded)
    assert a.config.pad_token_id == loaded.pad_token_id
    # The added row is deterministic, so an adapter-only checkpoint reloads onto the same weights.
    assert torch.equal(a.get_input_embeddings().weight, b.get_input_embeddings().weight)
    assert torch.equal(a.get_output_embeddings().weight, b.get_output_embeddings().weight)
