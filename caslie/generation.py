"""Batched greedy answer generation: sized to the labels, optionally constrained to them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

RESPONSE_CONTEXT = "### Response:\n"
"""What the paper's prompt templates end with before the answer: answers are tokenised after it."""


def answer_ids(tokenizer: Any, answer: str, context: str = RESPONSE_CONTEXT) -> list[int]:
    """The tokens of ``answer`` as they follow ``context`` in a joint tokenisation (what the model
    was trained to emit), without EOS."""
    before = tokenizer(context, add_special_tokens=False)["input_ids"]
    joint = tokenizer(context + answer, add_special_tokens=False)["input_ids"]
    if joint[: len(before)] != before:  # the answer merged into the context's last token
        return tokenizer(answer, add_special_tokens=False)["input_ids"]
    return joint[len(before) :]


def label_ids(tokenizer: Any, labels: Iterable[str]) -> list[list[int]]:
    """Token ids of each label as the training target tokenises it: after the prompt, in one joint
    string (:func:`answer_ids`)."""
    return [answer_ids(tokenizer, label) for label in sorted(labels)]


def answer_budget(tokenizer: Any, labels: Iterable[str]) -> int:
    """New tokens enough for the longest label and its EOS."""
    return max((len(ids) for ids in label_ids(tokenizer, labels)), default=1) + 1


class LabelTrie:
    """Prefix tree over label token sequences; after a whole label only EOS may follow."""

    def __init__(self, sequences: Sequence[Sequence[int]], eos_id: int):
        self.eos_id = eos_id
        self.root: dict = {}
        for seq in sequences:
            node = self.root
            for tok in seq:
                node = node.setdefault(tok, {})
            node[eos_id] = {}

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that may follow ``prefix`` (only EOS once the prefix leaves the tree)."""
        node = self.root
        for tok in prefix:
            if tok not in node:
                return [self.eos_id]
            node = node[tok]
        return list(node) or [self.eos_id]


@torch.no_grad()
def generate_answers(
    model: Any,
    tokenizer: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    tries: Sequence[LabelTrie] | None = None,
    pad_id: int | None = None,
) -> list[str]:
    """Greedy, KV-cached generation for a left-padded batch; returns the decoded new text per row.

    Args:
        model: A causal LM (or a peft model around one).
        tokenizer: Its tokenizer (pad and EOS ids, decoding).
        input_ids: Left-padded prompt ids, shape ``(batch, width)``.
        attention_mask: Its mask.
        max_new_tokens: Generation budget.
        tries: One :class:`LabelTrie` per row to constrain decoding to its valid labels.
        pad_id: The pad id generation writes after a row has ended (default: the tokenizer's).
    """
    width = input_ids.shape[1]
    allowed = None
    if tries is not None:

        def allowed(row: int, ids: torch.Tensor) -> list[int]:
            return tries[row].allowed(ids[width:].tolist())

    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id if pad_id is None else pad_id,
        eos_token_id=tokenizer.eos_token_id,
        prefix_allowed_tokens_fn=allowed,
    )
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
