"""The last decoder layer at the answer positions only: the same loss and gradients as the whole
layer, for packed rows, padded batches and grouped keys, on Mistral and Llama layers."""

import pytest
import torch
import torch.nn.functional as F

from caslie.data.packing import collate_training
from caslie.data.tokenize import IGNORE_INDEX
from caslie.models.answer_layer import answer_only_last_layer

TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}
"""float32: the pruned layer sums the same products in another order."""


def _model(kind: str):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    shape = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")  # fmt: skip
    base = (
        MistralForCausalLM(MistralConfig(**shape, sliding_window=None))
        if kind == "mistral"
        else LlamaForCausalLM(LlamaConfig(**shape))
    )
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=targets, init_lora_weights=False))  # fmt: skip
    model.train()
    return model


def _features(lengths_and_prompts, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, 96, (n,), generator=g).tolist(), "prompt_len": p}
            for n, p in lengths_and_prompts]  # fmt: skip


def _loss_and_grads(model, batch, pruned: bool):
    model.zero_grad()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if pruned:
        keep = batch["logit_positions"]
        logits = model(**inputs, caslie_keep=keep, logits_to_keep=0, use_cache=False).logits
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, keep + 1].flatten(),
                               ignore_index=IGNORE_INDEX)  # fmt: skip
    else:
        loss = model(**inputs, labels=batch["labels"], use_cache=False).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("kind", ["mistral", "llama"])
@pytest.mark.parametrize("packed", [True, False])
def test_the_pruned_last_layer_gives_the_whole_layers_loss_and_gradients(kind, packed):
    model = _model(kind)
    assert answer_only_last_layer(model.get_base_model(), max_length=64)
    feats = _features([(23, 20), (9, 5), (17, 15), (30, 28)])
    batch = collate_training(feats, pad_id=0, multiple=8, packed=packed)
    assert len(batch["logit_positions"]) < batch["input_ids"].shape[1] // 2  # most rows are cut
    full_loss, full_grads = _loss_and_grads(model, batch, pruned=False)
    loss, grads = _loss_and_grads(model, batch, pruned=True)
    torch.testing.assert_close(loss, full_loss, **TOLERANCE)
    assert grads.keys() == full_grads.keys() and len(grads) == 7 * 3 * 2
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name  # every adapter, the last layer's too, learns
        torch.testing.assert_close(grad, full_grads[name], **TOLERANCE, msg=name)


def test_without_positions_the_layer_runs_whole_and_generation_is_unchanged():
    model = _model("mistral").eval()
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        answer_only_last_layer(model.get_base_model(), max_length=64)
        after = model(input_ids=ids).logits
        gen = model.generate(input_ids=ids[:1], max_new_tokens=3, do_sample=False)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert gen.shape == (1, 15)


def test_a_sliding_window_shorter_than_the_examples_keeps_the_whole_layer():
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=2, sliding_window=16)  # fmt: skip
    model = MistralForCausalLM(cfg)
    assert not answer_only_last_layer(model, max_length=64)
    assert answer_only_last_layer(model, max_length=16)


def test_without_a_4d_mask_queries_see_their_own_example_up_to_themselves():
    """The mask flash-attention's inputs imply (no 4-D mask: position ids mark a packed row's
    examples, or a 2-D padding mask), as a block-diagonal causal mask would give it."""
    from caslie.models.answer_layer import _query_mask

    lens = [5, 3, 4]
    position_ids = torch.cat([torch.arange(n) for n in lens])[None]
    keep = torch.tensor([0, 4, 5, 7, 9, 11])
    segment = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    keys = torch.arange(sum(lens))
    expected = (segment[keep][:, None] == segment[None]) & (keys[None] <= keep[:, None])
    assert torch.equal(_query_mask(None, position_ids, keep, sum(lens)), expected[None, None])
    padding = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    got = _query_mask(padding, torch.arange(4)[None], torch.tensor([1, 3]), 4)
    causal = torch.tensor([[True, True, False, False], [True, True, True, True]])
    assert torch.equal(got, (causal[None] & padding[:, None].bool())[:, None])


def test_under_gradient_checkpointing_the_cut_layer_gives_the_same_gradients():
    model = _model("llama")
    base = model.get_base_model()
    batch = collate_training(_features([(23, 20), (9, 5), (17, 15)]), 0, 8, packed=True)
    full_loss, full_grads = _loss_and_grads(model, batch, pruned=False)
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    base.enable_input_require_grads()
    answer_only_last_layer(base, max_length=64)
    loss, grads = _loss_and_grads(model, batch, pruned=True)
    torch.testing.assert_close(loss, full_loss, **TOLERANCE)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], **TOLERANCE, msg=name)
