"""Prompt text -> tokens: answer-only loss on the joint tokenisation, structured trimming, collation.

A training example is tokenised as eCeLLM tokenised it: prompt and answer as one string (then EOS),
with the loss masked over the first ``len(tokenise(prompt))`` tokens. SentencePiece tokenizers
(Mistral, Llama-2) thus see the answer's first token as it follows ``### Response:\n``, not as the
start of a word, which is what the released models learnt and what generation produces.

A prompt is held as three parts, ``head + input + tail``, so that an over-long *training* example is
shortened inside its input while the template, the options and the answer stay whole, and the input
stays valid JSON: SR drops its oldest history items first; other tasks shorten their longest text
field. Evaluation prompts are never trimmed: one that does not fit the model's context is skipped
and counted.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

import torch

from caslie.errors import ConfigError

IGNORE_INDEX = -100
"""Label value the loss ignores (prompt and padding positions)."""


def split_prompt(render: Callable[[str], str]) -> tuple[str, str]:
    """Render a prompt around a placeholder input; return the text before and after the input.

    The placeholder is drawn afresh until it occurs nowhere else in the rendered prompt, so no row
    text (an instruction or options holding any fixed marker) can move the split: ``head + input
    + tail`` is always exactly the prompt rendered with the input.

    Args:
        render: A function ``input_text -> prompt``.
    """
    while True:
        placeholder = f"\x00input-{secrets.token_hex(8)}\x00"
        rendered = render(placeholder)
        if rendered.count(placeholder) <= 1:
            break
    head, sep, tail = rendered.partition(placeholder)
    if not sep:
        raise ConfigError(
            "the prompt template dropped the input text: check data.prompt_template (a chat "
            "template must render the user's message)"
        )
    return head, tail


def control_strings(tokenizer: Any) -> list[str]:
    """The strings a tokenizer turns into one added token (``</s>``, ``[INST]``...) when it meets
    them in text."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return sorted({t.content for t in added.values() if t.content}, key=len, reverse=True)


def holds_control_text(texts: list[str | None], controls: list[str]) -> bool:
    """Whether any of a row's texts holds a control string (then it is tokenised by parts)."""
    return any(c in t for t in texts if t for c in controls)


def encode_with_row_text(tokenizer: Any, rendered: str, row_text: str,
                         add_special_tokens: bool) -> list[int]:  # fmt: skip
    """Token ids of a rendered prompt that holds ``row_text`` verbatim (a chat turn's content):
    the template around it keeps its control tokens, ``row_text`` is tokenised as text."""
    at = rendered.find(row_text)
    if at < 0:  # the template changed the text: nothing to tell apart
        return tokenizer(rendered, add_special_tokens=add_special_tokens)["input_ids"]
    ids = list(tokenizer("", add_special_tokens=add_special_tokens)["input_ids"])
    for text, from_row in ((rendered[:at], False), (row_text, True),
                           (rendered[at + len(row_text) :], False)):  # fmt: skip
        if text:
            ids += tokenizer(text, add_special_tokens=False, split_special_tokens=from_row)[
                "input_ids"
            ]
    return ids


def prompt_parts(render: Callable[[str, str, str | None], str], instruction: str,
                 options_text: str | None) -> tuple[list[list], list[list]]:  # fmt: skip
    """The prompt before and after the input as ``[text, from_row]`` parts, telling the template's
    text from the row's instruction and options.

    Args:
        render: ``(instruction, input, options) -> prompt``.
        instruction: The row's instruction.
        options_text: The row's options text, or ``None``.
    """
    marks = [f"\x00{name}-{secrets.token_hex(8)}\x00" for name in ("instr", "input", "opts")]
    rendered = render(marks[0], marks[1], marks[2] if options_text is not None else None)
    values = {marks[0]: instruction, marks[2]: options_text or ""}
    head: list[list] = []
    parts = head
    tail: list[list] = []
    rest = rendered
    while rest:
        found = [(rest.find(m), m) for m in marks if m in rest]
        if not found:
            parts.append([rest, False])
            break
        at, mark = min(found)
        parts.append([rest[:at], False])
        if mark == marks[1]:
            parts = tail
        else:
            parts.append([values[mark], True])
        rest = rest[at + len(mark) :]
    return head, tail


def trim_levels(input_text: str) -> tuple[Callable[[int], str], int] | None:
    """Shorter, still valid JSON inputs: ``(cut, n)`` where ``cut(level)`` for ``level`` in ``0..n``
    trims more as the level grows; ``None`` when the input is not JSON.

    A list (SR history) drops its ``level`` oldest items, keeping the newest one. A dict caps every
    string value at ``longest - level`` characters, so its longest text field shortens first.
    """
    try:
        value = json.loads(input_text)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list):
        return (lambda level: json.dumps(value[level:])), max(len(value) - 1, 0)
    if isinstance(value, dict):
        longest = max((len(v) for v in value.values() if isinstance(v, str)), default=0)

        def cut(level: int) -> str:
            cap = longest - level
            return json.dumps({k: v[:cap] if isinstance(v, str) else v for k, v in value.items()})

        return cut, longest
    return None


def batch_ids(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    """``tokenizer(texts, add_special_tokens=...)["input_ids"]``, from the Rust tokenizer's
    ``encode_batch_fast`` where the tokenizer has one: the same pipeline and ids, without the
    offsets and the per-encoding conversion to Python that a build of 56k rows spends seconds on.

    Falls back to the tokenizer call for a slow tokenizer, or one that splits special tokens or
    truncates or pads by default (what the call would configure on the backend first).
    """
    if not _plain_backend(tokenizer):
        return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
    backend = tokenizer._tokenizer
    # The tokenizer call sets this flag on every call (a parts call may have left it on).
    backend.encode_special_tokens = False
    return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]


def _plain_backend(tokenizer: Any) -> bool:
    """Whether the Rust tokenizer behind ``tokenizer`` can be called directly with the ids the
    tokenizer call would give: no splitting of special tokens, truncation or padding set."""
    backend = getattr(tokenizer, "_tokenizer", None)
    return (
        hasattr(backend, "encode_batch_fast")
        and not getattr(tokenizer, "split_special_tokens", False)
        and backend.truncation is None
        and backend.padding is None
    )


def _splits_locally(backend: Any) -> bool:
    """Whether a prompt's tokens can be read off the tokens of prompt + answer.

    True for a BPE model without ``ignore_merges`` or dropout, and for WordPiece and WordLevel,
    whose post-processor adds nothing after the text and whose normalizer keeps the text's end:
    then, where no token of the joint string spans the end of the prompt, the joint's first
    tokens are exactly the prompt's own tokens (no merge crossed that point, so none changed what
    lies before it; a pre-token that does cross it is split by the same merges).
    ``ignore_merges`` breaks this: a word found whole in the vocabulary is one token alone, but
    may merge differently once the answer extends it (Llama-3), so such tokenizers tokenise the
    prompt again.
    """
    from tokenizers import models

    model = backend.model
    if isinstance(model, models.BPE):
        local = not getattr(model, "ignore_merges", False) and not model.dropout
    else:
        local = isinstance(model, models.WordPiece | models.WordLevel)
    norm = backend.normalizer
    # A normalizer that strips the text's end treats the prompt's last spaces unlike the joint's.
    if not local or (norm is not None and norm.normalize_str("a ") == norm.normalize_str("a")):
        return False
    probe = backend.encode("x", add_special_tokens=True)
    at = probe.char_to_token(0)  # None: the text gave no token, nothing to tell the end by
    return at is not None and not any(probe.special_tokens_mask[at + 1 :])


def _tokens_before(enc: Any, cut: int, end: int) -> int | None:
    """How many tokens of ``enc`` lie before character ``cut``, or ``None`` unless the prompt's
    last character and the answer's first one sit in two tokens that meet there (the test looks
    at both sides, since trimmed offsets can hide the space a token took from the prompt)."""
    if cut == end:  # no answer: the prompt is the whole text
        return len(enc.ids)
    if cut == 0:
        return None
    last, first = enc.char_to_token(cut - 1), enc.char_to_token(cut)
    if last is None or first is None or last >= first or enc.token_to_chars(first)[0] != cut:
        return None
    return first


def joint_ids(tokenizer: Any, prompts: list[str], targets: list[str],
              add_special_tokens: bool) -> list[tuple[list[int], int]]:  # fmt: skip
    """``(ids(prompt + target), len(ids(prompt)))`` per row, as eCeLLM counted the prompt tokens.

    Where the tokenizer splits locally (:func:`_splits_locally`), one encoding of the joint text
    gives both: the prompt's tokens end where the token holding the answer's first character
    begins. A row whose boundary falls inside a token, or whose answer starts with text that
    yields no token, has its prompt tokenised alone, as has every row of a tokenizer that does not
    split locally; ``tests/test_data_tokenize.py`` checks both against two tokenizer calls.
    """
    texts = [p + t for p, t in zip(prompts, targets, strict=True)]
    backend = getattr(tokenizer, "_tokenizer", None)
    if not (_plain_backend(tokenizer) and _splits_locally(backend)):
        fulls = batch_ids(tokenizer, texts, add_special_tokens)
        alone = batch_ids(tokenizer, prompts, add_special_tokens)
        return [(f, len(a)) for f, a in zip(fulls, alone, strict=True)]
    backend.encode_special_tokens = False
    out: list[tuple[list[int], int]] = []
    again: list[int] = []
    for i, enc in enumerate(backend.encode_batch(texts, add_special_tokens=add_special_tokens)):
        n_prompt = _tokens_before(enc, len(prompts[i]), len(texts[i]))
        if n_prompt is None:
            again.append(i)
        out.append((enc.ids, n_prompt if n_prompt is not None else -1))
    if again:
        alone = batch_ids(tokenizer, [prompts[i] for i in again], add_special_tokens)
        for i, a in zip(again, alone, strict=True):
            out[i] = (out[i][0], len(a))
    return out


class Tokenise:
    """Batched ``datasets.map`` function: prompt parts + target -> ``input_ids`` and ``prompt_len``.

    Outputs per example: ``prompt`` (as tokenised), ``input_ids`` (prompt + answer + EOS),
    ``prompt_len``, ``length``, ``trimmed`` and ``keep`` (false: too long, see the module docstring).

    Args:
        tokenizer: The model's tokenizer (with EOS).
        max_length: Longest training example (``data.max_length``).
        add_special_tokens: Whether tokenising adds BOS (the paper's template) or the chat template
            already holds it.
        eval_max_length: Longest evaluation example (the model's context); ``None``: no limit.
    """

    def __init__(self, tokenizer: Any, max_length: int, add_special_tokens: bool,
                 eval_max_length: int | None = None):  # fmt: skip
        self.tok = tokenizer
        self.max_length, self.eval_max_length = max_length, eval_max_length
        self.add_special = add_special_tokens
        if tokenizer.eos_token_id is None:
            raise ConfigError(
                "the tokenizer has no EOS token, so the model could never learn to stop: set "
                "model.tokenizer to one that has"
            )

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return batch_ids(self.tok, texts, self.add_special)

    def encode(self, prompt: str, target: str) -> tuple[list[int], int]:
        """(prompt + target tokenised jointly, then EOS; the number of prompt tokens)."""
        ((full, n_prompt),) = joint_ids(self.tok, [prompt], [target], self.add_special)
        return full + [self.tok.eos_token_id], n_prompt

    def encode_parts(self, parts: list[list], target: str) -> tuple[list[int], int]:
        """As :meth:`encode` for a prompt given as ``[text, from_row]`` parts: the template's
        parts keep their control tokens, the row's text (and the answer) is tokenised with
        ``split_special_tokens``, so ``</s>`` or ``[INST]`` written in a row stays text."""
        bos = self._ids([""])[0]  # what add_special_tokens puts in front (BOS, or nothing)
        ids = list(bos)
        for text, from_row in parts:
            if text:
                ids += self.tok(text, add_special_tokens=False,
                                split_special_tokens=bool(from_row))["input_ids"]  # fmt: skip
        n_prompt = len(ids)
        ids += self.tok(target, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return ids + [self.tok.eos_token_id], n_prompt

    def _encode_row(self, head: str, text: str, tail: str, target: str,
                    parts: tuple[list, list] | None) -> tuple[str, list[int], int]:  # fmt: skip
        prompt = head + text + tail
        if parts is None:
            return (prompt, *self.encode(prompt, target))
        return (prompt, *self.encode_parts([*parts[0], [text, True], *parts[1]], target))

    def _fit(self, head: str, text: str, tail: str, target: str, parts: tuple[list, list] | None):
        """The least trimmed prompt whose example fits ``max_length``, or ``None``."""
        levels = trim_levels(text)
        if levels is None:
            return None
        cut, most = levels
        lo, hi, best = 1, most, None
        while lo <= hi:
            mid = (lo + hi) // 2
            prompt, ids, n_prompt = self._encode_row(head, cut(mid), tail, target, parts)
            if len(ids) <= self.max_length:
                best, hi = (prompt, ids, n_prompt), mid - 1
            else:
                lo = mid + 1
        return best

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {
            k: [] for k in ("prompt", "input_ids", "prompt_len", "length", "trimmed", "keep")
        }
        parts_col = batch.get("parts") or [""] * len(batch["head"])
        rows = list(zip(batch["head"], batch["input_text"], batch["tail"], batch["target"],
                        batch["split"], parts_col, strict=True))  # fmt: skip
        prompts = [head + text + tail for head, text, tail, *_ in rows]
        joint = [i for i, row in enumerate(rows) if not row[5]]
        # One tokenizer call per batch for the rows tokenised jointly (all but those holding a
        # control string): the same ids as one call per row, without a call's overhead per row.
        pairs = joint_ids(self.tok, [prompts[i] for i in joint], [rows[i][3] for i in joint],
                          self.add_special) if joint else []  # fmt: skip
        encoded: dict[int, tuple[list[int], int]] = {
            i: (full + [self.tok.eos_token_id], n)
            for i, (full, n) in zip(joint, pairs, strict=True)
        }
        for i, (head, text, tail, target, split, parts_json) in enumerate(rows):
            parts = tuple(json.loads(parts_json)) if parts_json else None
            prompt = prompts[i]
            if parts is None:
                ids, n_prompt = encoded[i]
            else:
                ids, n_prompt = self.encode_parts([*parts[0], [text, True], *parts[1]], target)
            trimmed, keep = False, True
            if split != "train":  # never trimmed: the model must see the whole prompt
                keep = self.eval_max_length is None or len(ids) <= self.eval_max_length
            elif len(ids) > self.max_length:
                fitted = self._fit(head, text, tail, target, parts)
                keep, trimmed = fitted is not None, fitted is not None
                if fitted is not None:
                    prompt, ids, n_prompt = fitted
            out["prompt"].append(prompt)
            out["input_ids"].append(ids)
            out["prompt_len"].append(n_prompt)
            out["length"].append(len(ids))
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
