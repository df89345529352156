"""Padding-free training batches: a micro-batch's examples laid end to end in one row.

A packed batch is one row of ``sum(len(example))`` tokens with no padding. ``position_ids`` restart
at 0 for every example and no ``attention_mask`` is passed, which is how transformers recognises
packed sequences: flash-attention runs each example as its own sequence, SDPA and eager attention
get a block-diagonal causal mask, so no token attends across an example boundary. The labels keep
the answer-only loss: the prompt and each example's first token (which the previous example's last
token would otherwise be asked to predict) are ignored.

The number of examples per micro-batch is unchanged (the sampler deals the same batches, so
optimiser steps, learning-rate schedule and exact resume stay as without packing); only padding is
gone.

Both collators also give ``logit_positions``: the positions whose next token is an answer token.
The model computes logits (the ``hidden x vocab`` product and the loss) there only; every other
position's logits would be multiplied by a zero gradient.
"""

from __future__ import annotations

import torch

from caslie.data.tokenize import IGNORE_INDEX, collate_train


def logit_positions(labels: torch.Tensor) -> torch.Tensor:
    """Sequence positions (1-D, sorted) whose next label is an answer token in any row.

    Computed in the collator, on the CPU, so the training step needs no host-device sync to know
    how many positions it keeps.
    """
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()


def collate_packed(features: list[dict]) -> dict[str, torch.Tensor]:
    """One padding-free row of the examples' tokens, per-example ``position_ids``, answer labels.

    Args:
        features: Tokenised examples (``input_ids`` and ``prompt_len``).

    Returns:
        ``input_ids``, ``position_ids``, ``labels`` (each ``[1, total]``) and ``logit_positions``.
    """
    ids, positions, labels = [], [], []
    for f in features:
        seq = torch.as_tensor(f["input_ids"], dtype=torch.long)
        n, p = len(seq), max(int(f["prompt_len"]), 1)
        ids.append(seq)
        positions.append(torch.arange(n))
        target = torch.full((n,), IGNORE_INDEX, dtype=torch.long)
        target[p:] = seq[p:]
        labels.append(target)
    labels_row = torch.cat(labels)[None]
    return {
        "input_ids": torch.cat(ids)[None],
        "position_ids": torch.cat(positions)[None],
        "labels": labels_row,
        "logit_positions": logit_positions(labels_row),
    }


def collate_training(features: list[dict], pad_id: int, multiple: int = 8,
                     packed: bool = False) -> dict:  # fmt: skip
    """A training or validation-loss batch: packed (:func:`collate_packed`) or right-padded
    (:func:`~caslie.data.tokenize.collate_train`), with ``logit_positions`` and ``seq_lens``, each
    example's length as a plain list: the boundaries of a packed row, and the token counts that
    throughput logging reads without touching a device tensor."""
    if packed:
        batch = collate_packed(features)
    else:
        batch = collate_train(features, pad_id, multiple)
        batch["logit_positions"] = logit_positions(batch["labels"])
    batch["seq_lens"] = [len(f["input_ids"]) for f in features]
    return batch


def token_counts(batch: dict) -> tuple[int, int]:
    """(real tokens, tokens computed) of a training batch (from its ``seq_lens``, else its mask)."""
    if "seq_lens" in batch:
        return sum(batch["seq_lens"]), batch["input_ids"].numel()  # numel: shape, not data
    mask = batch["attention_mask"]
    return int(mask.sum()), mask.numel()
