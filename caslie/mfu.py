"""Model FLOPs utilisation: training FLOPs per token against the device's peak.

FLOPs per token follow the PaLM convention: ``6 N`` for the matrix products of forward and
backward (``N``: every parameter but the input embeddings, frozen ones included, since their
products are computed all the same) plus ``12 x layers x hidden x context`` for attention's
score and value products, where ``context`` is the token-weighted mean example length
(``sum(len^2) / sum(len)``: a token attends over its own example). This is the model's nominal
work; what caslie skips (logits outside the answers, frozen weight gradients) is not subtracted,
so MFU compares with other stacks' figures.

The peak comes from Lightning's table of known accelerators (``get_available_flops``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters that take part in matrix products per token (all but the input embeddings)."""
    total = sum(p.numel() for p in model.parameters())
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if get_embeddings is not None else None
    if embeddings is not None:
        total -= sum(p.numel() for p in embeddings.parameters())
    return total


def attention_context(lengths: Sequence[int]) -> float:
    """Token-weighted mean example length: the average number of tokens a token attends over."""
    total = sum(lengths)
    return sum(n * n for n in lengths) / total if total else 0.0


def train_flops_per_token(n_params: int, layers: int, hidden: int, context: float) -> float:
    """Forward + backward FLOPs of one token (see the module docstring)."""
    return 6.0 * n_params + 12.0 * layers * hidden * context


def model_shape(model: Any) -> tuple[int, int]:
    """(decoder layers, hidden size) from a transformers model's config."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    return int(config.num_hidden_layers), int(config.hidden_size)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The device's peak FLOP/s for ``dtype`` (``None``: not a device Lightning knows)."""
    from lightning.fabric.utilities.throughput import get_available_flops

    if device.type == "cpu":
        return None  # no meaningful peak: CPU figures would depend on the vector units in use
    flops = get_available_flops(device, dtype)
    return float(flops) if flops else None
