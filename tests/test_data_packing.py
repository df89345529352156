"""Packed batches: layout, answer-only labels, and the same loss and gradients as padded batches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from caslie.config import Config, ModelConfig
from caslie.data.packing import collate_packed, collate_training, logit_positions, token_counts
from caslie.data.tokenize import IGNORE_INDEX, collate_train
from caslie.models.lora import LoRAInstructModule
from caslie.pretrained import tokenizer_for

FEATURES = [
    {"input_ids": [1, 5, 6, 7, 8, 2], "prompt_len": 4},
    {"input_ids": [1, 9, 10, 2], "prompt_len": 2},
    {"input_ids": [1, 11, 12, 13, 14, 15, 16, 2], "prompt_len": 5},
]


def test_packed_row_restarts_positions_and_masks_prompts():
    batch = collate_packed(FEATURES)
    assert batch["input_ids"].tolist() == [[t for f in FEATURES for t in f["input_ids"]]]
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7]
    ]
    labels = batch["labels"][0].tolist()
    assert labels[:6] == [IGNORE_INDEX] * 4 + [8, 2]
    assert labels[6:10] == [IGNORE_INDEX] * 2 + [10, 2]
    assert labels[10:] == [IGNORE_INDEX] * 5 + [15, 16, 2]
    assert "attention_mask" not in batch  # what tells transformers the row is packed


def test_logit_positions_are_where_the_next_token_is_an_answer():
    batch = collate_train(FEATURES, pad_id=0, multiple=8)
    keep = logit_positions(batch["labels"])
    for row in batch["labels"]:
        answers = {t - 1 for t in range(1, len(row)) if row[t] != IGNORE_INDEX}
        assert answers <= set(keep.tolist())
    assert set(keep.tolist()) == {
        t - 1 for row in batch["labels"] for t in range(1, len(row)) if row[t] != IGNORE_INDEX
    }


def test_token_counts_come_from_the_collator_without_padding_when_packed():
    padded = collate_training(FEATURES, pad_id=0, multiple=8)
    packed = collate_training(FEATURES, pad_id=0, packed=True)
    real = sum(len(f["input_ids"]) for f in FEATURES)
    assert token_counts(padded) == (real, 3 * 8)
    assert token_counts(packed) == (real, real)
    assert token_counts({"attention_mask": padded["attention_mask"]}) == (real, 3 * 8)


@pytest.fixture(scope="module")
def module_and_features():
    cfg = Config(model=dataclasses.replace(ModelConfig(), name_or_path="tiny:mistral",
                                           lora_dropout=0.0))  # fmt: skip
    tokenizer = tokenizer_for(cfg.model)
    module = LoRAInstructModule(cfg, tokenizer)
    module.configure_model()
    # Adapters start at zero (B = 0); give them values so that their gradients are not trivial.
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    texts = [("Is this a shoe? ", "yes"), ("Rate the review from 1 to 5: great ", "5"),
             ("Which option fits the query about red dresses? ", "B")]  # fmt: skip
    features = []
    for prompt, answer in texts:
        prompt_ids = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + answer)["input_ids"] + [tokenizer.eos_token_id]
        features.append({"input_ids": full, "prompt_len": len(prompt_ids)})
    return module, features, tokenizer


def _loss_and_grads(module, batch):
    module.model.zero_grad()
    loss = module(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_packed_loss_and_gradients_equal_padded_ones(module_and_features):
    """Tolerance: 1e-5 relative (float32; only the order of the sums differs)."""
    module, features, tok = module_and_features
    padded = collate_training(features, pad_id=tok.pad_token_id, multiple=8)
    packed = collate_training(features, pad_id=tok.pad_token_id, packed=True)
    loss_a, grads_a = _loss_and_grads(module, padded)
    loss_b, grads_b = _loss_and_grads(module, packed)
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6), name


def test_answer_position_logits_give_the_full_causal_lm_loss(module_and_features):
    module, features, tok = module_and_features
    batch = collate_training(features, pad_id=tok.pad_token_id, multiple=8)
    full = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        labels=batch["labels"]).loss  # fmt: skip
    loss_a, grads_a = _loss_and_grads(module, batch)
    without = {k: v for k, v in batch.items() if k != "logit_positions"}
    loss_b, grads_b = _loss_and_grads(module, without)
    assert torch.allclose(loss_a, full.detach(), rtol=1e-5)
    assert torch.allclose(loss_a, loss_b, rtol=1e-5)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6), name


def test_packing_keeps_examples_apart(module_and_features):
    """An example's loss in a packed row does not depend on its neighbours."""
    module, features, tok = module_and_features
    alone = [module(collate_training([f], pad_id=tok.pad_token_id, packed=True)) for f in features]
    n_answer = torch.tensor([len(f["input_ids"]) - f["prompt_len"] for f in features])
    expected = (torch.stack(alone).detach() * n_answer).sum() / n_answer.sum()
    together = module(collate_training(features, pad_id=tok.pad_token_id, packed=True)).detach()
    assert torch.allclose(together, expected, rtol=1e-5)


def test_segment_attention_gives_the_block_diagonal_result(module_and_features):
    """Attention per example (caslie_segments) equals SDPA with transformers' packed mask."""
    from caslie.models.segments import NAME, use_segment_attention

    module, features, tok = module_and_features
    packed = collate_training(features, pad_id=tok.pad_token_id, packed=True)
    base = module.model.get_base_model()
    assert base.config._attn_implementation == "sdpa"
    loss_a, grads_a = _loss_and_grads(module, packed)
    try:
        assert use_segment_attention(base) and base.config._attn_implementation == NAME
        loss_b, grads_b = _loss_and_grads(module, packed)
        padded = collate_training(features, pad_id=tok.pad_token_id, multiple=8)
        loss_c, _ = _loss_and_grads(module, padded)  # no segments: SDPA with its mask
    finally:
        base.set_attn_implementation("sdpa")
    assert torch.allclose(loss_a, loss_b, rtol=1e-5) and torch.allclose(loss_a, loss_c, rtol=1e-5)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6), name
