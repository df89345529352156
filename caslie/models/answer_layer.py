"""The last decoder layer computed only where the loss reads it.

The answer-only loss reads the model's output at the positions whose next token is an answer
token (``logit_positions``, a few per example). Every earlier layer must run at every position,
since the next layer's keys and values come from all of them; the last layer's output, though,
is read only there. So at those positions alone it computes its queries, attention, output
projection and MLP, and its keys and values (which those queries attend to) everywhere: with a
few answer tokens per example, most of one layer's work is gone and the loss and gradients are
those of the whole layer (``tests/test_models_answer_layer.py``).

The model's forward takes the positions as ``caslie_keep``; without it (generation, a model not
set up), or with a mask that is not a tensor (flex-attention's), the layer runs as transformers
wrote it. Under gradient checkpointing the cut layer is not recomputed in the backward pass: it
keeps its activations (keys and values at every position, the rest at the kept ones only).

It applies to the Llama and Mistral decoder layers (the paper's three models), whose structure it
repeats: RMSNorm, rotary attention with grouped keys and values, a gated MLP, two residuals.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import rotate_half  # Mistral's is the same

ARCHITECTURES = ("llama", "mistral")
"""``config.model_type`` values whose decoder layer this module knows."""


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (``[batch, heads, tokens, head_dim]``) by ``[batch, tokens,
    head_dim]`` angles, as Llama and Mistral apply it."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def _query_mask(attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
                keep: torch.Tensor, tokens: int) -> torch.Tensor:  # fmt: skip
    """Which keys each kept query may attend to, ``[batch, 1, kept, tokens]``.

    transformers' 4-D mask (padding, packing, sliding window) gives its rows directly. Without one
    (one unpadded row, or a packed row whose examples the position ids mark) a query attends to
    its own example from its start (``position - position_id``) to itself.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask[:, :, keep, :]
    keys = torch.arange(tokens, device=keep.device)
    start = keep - position_ids[:, keep]  # [batch, kept]
    allowed = (keys >= start[..., None]) & (keys <= keep[:, None])
    if attention_mask is not None:  # a 2-D padding mask (flash-attention's input)
        allowed = allowed & attention_mask[:, None, :].bool()
    return allowed[:, None]


def _forward(layer: Any, full_forward: Any, hidden_states: torch.Tensor, *args: Any,
             caslie_keep: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # fmt: skip
    attention_mask = kwargs.get("attention_mask")
    position_ids = kwargs.get("position_ids")
    position_embeddings = kwargs.get("position_embeddings")
    plain_mask = attention_mask is None or isinstance(attention_mask, torch.Tensor)  # not flex's
    if (
        caslie_keep is None
        or args
        or position_ids is None
        or position_embeddings is None
        or not plain_mask
    ):
        return full_forward(hidden_states, *args, **kwargs)
    attn = layer.self_attn
    batch, tokens, _ = hidden_states.shape
    kept = caslie_keep.shape[0]
    normed = layer.input_layernorm(hidden_states)

    def heads(x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(batch, n, -1, attn.head_dim).transpose(1, 2)

    cos, sin = position_embeddings
    query = _rotary(heads(attn.q_proj(normed[:, caslie_keep]), kept),
                    cos[:, caslie_keep], sin[:, caslie_keep])  # fmt: skip
    key = _rotary(heads(attn.k_proj(normed), tokens), cos, sin)
    value = heads(attn.v_proj(normed), tokens)
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=_query_mask(attention_mask, position_ids, caslie_keep, tokens),
        dropout_p=attn.attention_dropout if layer.training else 0.0, scale=attn.scaling,
        enable_gqa=key.shape[1] != query.shape[1],
    )  # fmt: skip
    hidden = hidden_states[:, caslie_keep] + attn.o_proj(
        out.transpose(1, 2).reshape(batch, kept, -1)
    )
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def answer_only_last_layer(model: Any, max_length: int) -> bool:
    """Set ``model``'s last decoder layer to run at ``caslie_keep`` positions when given them.

    Returns whether it did: not for an architecture outside :data:`ARCHITECTURES`, nor for a
    sliding window shorter than ``max_length`` (the mask would have to hold it).
    """
    config = model.config
    window = getattr(config, "sliding_window", None)
    if config.model_type not in ARCHITECTURES or (window and window < max_length):
        return False
    layer = model.model.layers[-1]
    # An attribute, not a subclass: FSDP and checkpointing find the layer by its class name.
    layer.forward = partial(_forward, layer, layer.forward)
    return True
