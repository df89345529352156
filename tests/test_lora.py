import dataclasses

import pytest
import torch

from caslie.checkpoints import resolve_ckpt
from caslie.config import ConfigError, ModelConfig
from caslie.generation import LabelTrie, answer_budget, generate_answers, label_ids
from caslie.models.lora import (
    build_lora_model,
    load_base_model,
    precision_for,
    resolve_dtype,
)
from caslie.offline import ensure_tiny, load_tokenizer
from caslie.optim import warmup_cosine

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


def test_dtype_and_precision_on_this_machine():
    assert resolve_dtype("auto") == (
        torch.float32 if not torch.cuda.is_available() else resolve_dtype("auto")
    )
    assert resolve_dtype("bfloat16") == torch.bfloat16
    assert precision_for(torch.bfloat16) == "bf16-mixed"
    assert precision_for(torch.float16) == "16-mixed"
    assert precision_for(torch.float32) == "32-true"


def test_warmup_then_cosine_to_zero():
    total, warmup = 100, 5
    values = [warmup_cosine(s, warmup, total) for s in range(total + 1)]
    assert values[0] < values[4] < values[5] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[5:], values[6:], strict=False))
    assert values[-1] == pytest.approx(0.0)
    assert warmup_cosine(50, warmup, total, cosine=False) == 1.0


def _prompts(tokenizer, texts):
    from caslie.data.tokenize import collate_generate

    feats = []
    for i, t in enumerate(texts):
        ids = tokenizer(t)["input_ids"]
        feats.append({"input_ids": ids, "prompt_len": len(ids), "id": str(i), "task": "ap", "split": "val",
                      "target": "yes", "prompt": t, "options": "null", "caption_used": [],
                      "captions": "[]", "votes": "[]", "images": "[]"})  # fmt: skip
    return feats, collate_generate(feats, tokenizer.pad_token_id, 8)


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tokenizer):
    model = load_base_model(TINY, tokenizer).eval()
    texts = ["Is the hammer forged?", "A long question about a cordless drill, its batteries and the charger?",
             "Gloves", "Does this tent fit four people and a dog in the rain?"]  # fmt: skip
    feats, batch = _prompts(tokenizer, texts)
    batched = generate_answers(model, tokenizer, batch["input_ids"], batch["attention_mask"], 12)
    for f, text in zip(feats, batched, strict=True):
        ids = torch.tensor([f["input_ids"]])
        single = generate_answers(model, tokenizer, ids, torch.ones_like(ids), 12)
        assert single == [text]


def test_constrained_decoding_only_produces_valid_labels(tokenizer):
    model = load_base_model(TINY, tokenizer).eval()
    labels = {"yes", "no"}
    trie = LabelTrie(label_ids(tokenizer, labels), tokenizer.eos_token_id)
    feats, batch = _prompts(
        tokenizer, ["Is it steel?", "Red gloves", "Does the box include a charger?"]
    )
    free = generate_answers(model, tokenizer, batch["input_ids"], batch["attention_mask"], 6)
    forced = generate_answers(
        model, tokenizer, batch["input_ids"], batch["attention_mask"], 6, [trie] * 3
    )
    assert all(t in labels for t in forced)
    assert not all(t in labels for t in free)  # a random model left alone says anything
    assert answer_budget(tokenizer, labels) == max(len(x) for x in label_ids(tokenizer, labels)) + 1


def test_resume_checkpoint_resolution(tmp_path):
    assert resolve_ckpt(None, tmp_path) is None
    assert resolve_ckpt("last", tmp_path) is None  # first run: start fresh
    with pytest.raises(FileNotFoundError, match="trainer.ckpt_path 'nope.ckpt' does not exist"):
        resolve_ckpt("nope.ckpt", tmp_path)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"global_step": 4}, tmp_path / "checkpoints" / "last.ckpt")
    torch.save({"global_step": 9}, tmp_path / "hpc_ckpt_1.ckpt")
    (tmp_path / "hpc_ckpt_2.ckpt").write_bytes(b"truncated")
    assert resolve_ckpt("last", tmp_path) == str(tmp_path / "hpc_ckpt_1.ckpt")
