"""FLOPs per token and the peak they are compared with."""

import torch

from caslie.mfu import (
    attention_context,
    matmul_parameters,
    model_shape,
    peak_flops,
    train_flops_per_token,
)
from caslie.tiny import build_model, build_tokenizer


def test_matmul_parameters_leave_out_the_input_embeddings_only():
    tok = build_tokenizer("mistral")
    model = build_model("mistral", tok)
    embeddings = model.get_input_embeddings().weight.numel()
    assert matmul_parameters(model) == sum(p.numel() for p in model.parameters()) - embeddings
    assert model_shape(model) == (2, 64)


def test_flops_per_token_is_six_n_plus_attention_over_the_mean_context():
    # Two examples of 10 and 30 tokens: a token attends over 25 on average, (100 + 900) / 40.
    assert attention_context([10, 30]) == 25.0
    assert attention_context([]) == 0.0
    assert train_flops_per_token(1000, 2, 64, 25.0) == 6 * 1000 + 12 * 2 * 64 * 25


def test_no_peak_is_claimed_for_a_cpu():
    assert peak_flops(torch.device("cpu"), torch.float32) is None
