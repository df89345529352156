"""Attention over packed rows, one example at a time: what padding-free costs without flash-attention.

A packed row holds several examples end to end. transformers keeps their attention apart with a
block-diagonal mask over the whole row, so SDPA still computes every cross-example score and
throws it away: with four examples in a row, four times the attention work of padded batches.
``caslie_segments`` runs causal SDPA on each example's slice instead (the same result as the
block-diagonal mask; the work of the examples alone). The example lengths travel as a plain list
(``caslie_segments``, from the collator) so no device value is read to find the boundaries.

Without ``caslie_segments`` (generation, padded validation batches) it is transformers' SDPA with
the mask transformers built, so a model set to it evaluates exactly as with ``sdpa``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "caslie_segments"
"""The attention implementation's name (``model.config._attn_implementation``)."""


def segment_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                      caslie_segments: list[int] | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """Causal SDPA per example of a packed row (``caslie_segments``: their lengths), else SDPA.

    Shapes are transformers' (``[batch, heads, tokens, head_dim]`` in, ``[batch, tokens, heads,
    head_dim]`` out).
    """
    window = kwargs.get("sliding_window")
    if caslie_segments is None or query.shape[0] != 1 or (window and max(caslie_segments) > window):
        # Not a packed row, or a sliding window shorter than an example: the mask holds both.
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    outputs, start = [], 0
    for n in caslie_segments:
        part = slice(start, start + n)
        out, _ = sdpa_attention_forward(module, query[:, :, part], key[:, :, part],
                                        value[:, :, part], None, is_causal=True, **kwargs)  # fmt: skip
        outputs.append(out)
        start += n
    return torch.cat(outputs, dim=1), None


def use_segment_attention(model: Any) -> bool:
    """Switch ``model`` from SDPA to :func:`segment_attention` (other implementations, such as
    flash-attention, already run packed examples apart, and are kept). Returns whether it switched."""
    if model.config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(NAME, segment_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # evaluation keeps SDPA's masks
    model.set_attn_implementation(NAME)
    return True
