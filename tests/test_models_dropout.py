"""WordDropout: torch's dropout distribution from half the generator calls, swapped into peft's
LoRA adapters."""

import pytest
import torch

from caslie.models.dropout import WordDropout, keep_mask, use_word_dropout


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5])
def test_the_mask_keeps_each_element_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    mask = keep_mask((2000, 2048), p).flatten().double()
    sd = (p * (1 - p) / mask.numel()) ** 0.5
    assert abs(mask.mean().item() - (1 - p)) < 5 * sd
    # The two integers cut from one 64-bit word, and neighbouring words, are independent.
    for lag in (1, 2):
        both = (mask[:-lag] * mask[lag:]).mean().item()
        assert abs(both - (1 - p) ** 2) < 5 * sd


def test_the_mask_follows_torchs_seed():
    torch.manual_seed(3)
    first = keep_mask((64, 33), 0.1)
    torch.manual_seed(3)
    again = keep_mask((64, 33), 0.1)
    assert first.shape == (64, 33) and torch.equal(first, again)
    assert not torch.equal(first, keep_mask((64, 33), 0.1))  # the generator moved on


def test_training_mode_zeroes_or_scales_and_the_gradient_follows_the_same_mask():
    torch.manual_seed(0)
    drop = WordDropout(0.25)
    x = (torch.rand(300, 40) + 0.5).requires_grad_()  # no zeros: every dropped element shows
    out = drop(x)
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / 0.75)
    assert 0.70 < kept.double().mean().item() < 0.80
    out.sum().backward()
    assert torch.allclose(x.grad, kept.to(x.dtype) / 0.75)


def test_eval_mode_and_zero_p_pass_the_input_through():
    x = torch.randn(8, 5)
    assert torch.equal(WordDropout(0.1).eval()(x), x)
    assert torch.equal(WordDropout(0.0)(x), x)


def test_bf16_inputs_stay_bf16():
    x = torch.randn(16, 16, dtype=torch.bfloat16)
    assert WordDropout(0.1)(x).dtype == torch.bfloat16


def test_every_lora_adapter_gets_word_dropout_with_its_p_and_the_weights_keep_their_names():
    from peft import LoraConfig, get_peft_model
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["q_proj", "down_proj"])
    model = get_peft_model(MistralForCausalLM(cfg), lora)
    keys = set(model.state_dict())
    assert use_word_dropout(model) == 4  # two targets in each of two layers
    drops = [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
    assert len(drops) == 4 and all(type(d) is WordDropout and d.p == 0.2 for d in drops)
    assert set(model.state_dict()) == keys
    assert use_word_dropout(model) == 0  # already swapped
