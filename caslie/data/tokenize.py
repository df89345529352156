"""Prompt text -> tokens: answer-only loss, input-side truncation, and the collate functions.

A prompt is held as three parts, ``head + input + tail``, so that a too-long example is shortened
inside its input (the item text) while the template, the options and the answer stay whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

IGNORE_INDEX = -100
"""Label value the loss ignores (prompt and padding positions)."""

_SENTINEL = "\x00CASLIE_INPUT\x00"


def split_prompt(render: Callable[[str], str]) -> tuple[str, str]:
    """Render a prompt around a sentinel input; return the text before and after the input.

    Args:
        render: A function ``input_text -> prompt``.
    """
    rendered = render(_SENTINEL)
    head, sep, tail = rendered.partition(_SENTINEL)
    if not sep:
        raise ValueError("the prompt template dropped the input text")
    return head, tail


class Tokenise:
    """Batched ``datasets.map`` function: prompt parts + target -> ``input_ids`` and ``prompt_len``.

    The target is the answer followed by EOS; the loss later covers only those tokens. An example
    longer than ``max_length`` has its input text cut (binary search on characters) until it fits;
    it is counted in ``trimmed``. One that cannot fit even with an empty input is dropped and
    recorded in ``too_long``.
    """

    def __init__(self, tokenizer: Any, max_length: int, add_special_tokens: bool):
        self.tok = tokenizer
        self.max_length = max_length
        self.add_special = add_special_tokens
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token: the model could never learn to stop")

    def _prompt_ids(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=self.add_special)["input_ids"]

    def _fit(self, head: str, text: str, tail: str, budget: int) -> tuple[str, list[int]] | None:
        lo, hi, best = 0, len(text), None
        while lo <= hi:
            mid = (lo + hi) // 2
            prompt = head + text[:mid] + tail
            ids = self._prompt_ids([prompt])[0]
            if len(ids) <= budget:
                best, lo = (prompt, ids), mid + 1
            else:
                hi = mid - 1
        return best

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        prompts = [
            h + i + t
            for h, i, t in zip(batch["head"], batch["input_text"], batch["tail"], strict=True)
        ]
        prompt_ids = self._prompt_ids(prompts)
        target_ids = self.tok(batch["target"], add_special_tokens=False)["input_ids"]
        eos = self.tok.eos_token_id
        out: dict[str, list] = {
            k: [] for k in ("prompt", "input_ids", "prompt_len", "length", "trimmed", "keep")
        }
        for k, (p_ids, t_ids) in enumerate(zip(prompt_ids, target_ids, strict=True)):
            t_ids = t_ids + [eos]
            prompt, trimmed, keep = prompts[k], False, True
            if len(p_ids) + len(t_ids) > self.max_length:
                fitted = self._fit(
                    batch["head"][k],
                    batch["input_text"][k],
                    batch["tail"][k],
                    self.max_length - len(t_ids),
                )
                if fitted is None:
                    keep = False
                else:
                    (prompt, p_ids), trimmed = fitted, True
            out["prompt"].append(prompt)
            out["input_ids"].append(p_ids + t_ids)
            out["prompt_len"].append(len(p_ids))
            out["length"].append(len(p_ids) + len(t_ids))
            out["trimmed"].append(trimmed)
            out["keep"].append(keep)
        return out


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate_train(features: list[dict], pad_id: int, multiple: int = 8) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` and ``labels`` masked outside the answer.

    The batch length is the longest example rounded up to ``multiple``.
    """
    width = _round_up(max(len(f["input_ids"]) for f in features), multiple)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        seq = torch.as_tensor(f["input_ids"], dtype=torch.long)
        n, p = len(seq), int(f["prompt_len"])
        ids[i, :n], mask[i, :n] = seq, 1
        labels[i, p:n] = seq[p:]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def row_meta(feature: dict) -> dict[str, Any]:
    """What a prediction record keeps of its row: ids, gold, prompt, options, captions, votes, images."""
    return {
        "id": feature["id"],
        "task": feature["task"],
        "split": feature["split"],
        "gold": feature["target"],
        "prompt": feature["prompt"],
        "options": json.loads(feature["options"]),
        "caption_used": list(feature["caption_used"]),
        "captions": json.loads(feature["captions"]),
        "votes": json.loads(feature["votes"]),
        "images": json.loads(feature["images"]),
    }


def collate_generate(features: list[dict], pad_id: int, multiple: int = 8) -> dict[str, Any]:
    """Left-padded prompts for batched generation, with the rows' tasks and :func:`row_meta`."""
    prompts = [f["input_ids"][: int(f["prompt_len"])] for f in features]
    width = _round_up(max(len(p) for p in prompts), multiple)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.as_tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "task": [f["task"] for f in features],
        "meta": [row_meta(f) for f in features],
    }
