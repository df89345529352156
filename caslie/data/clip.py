"""MMECInstruct rows as texts + product images for the FashionCLIP baseline: examples and batches.

Each row becomes texts, images and a target:

- classification tasks (ap, psi, mpc, prp, sa): the task input as text (question and document;
  query and title; the review; PRP's two titles) and the product image(s); the target is the index of
  the gold label in the task's label space;
- choice tasks: cc scores the product (title + image) against the category names of its options;
  sr scores the user's history (each item's text + image) against each option item (text + image);
  the target is the gold option's index.

Images are read and preprocessed in the loader workers. An image that cannot be had is masked
(``image_mask`` 0) and counted, never replaced by something else; texts longer than the model's
limit (77 tokens for CLIP) are truncated on purpose and counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from caslie.images import ImageError, ImageLimits, load_image
from caslie.prompts import item_text
from caslie.record import Record
from caslie.tasks import CHOICE, TASKS, option_label


def label_index(records: Iterable[Record]) -> dict[str, dict[str, int]]:
    """``{task: {label: index}}`` of the classification tasks, in order of first appearance (each
    row's labels sorted), so the same rows always give the same head layout."""
    index: dict[str, dict[str, int]] = {}
    for r in records:
        if TASKS[r.task].metric_kind != CHOICE:
            labels = index.setdefault(r.task, {})
            for label in sorted(r.labels()):
                labels.setdefault(label, len(labels))
    return index


def clip_example(record: Record) -> dict[str, Any]:
    """Texts, image references and option layout of one row (see the module docstring)."""
    inp, task = record.input, record.task
    images = list(record.images)
    if task == "cc":
        return {"texts": [inp.get("title", "")], "images": images,
                "options": [item_text(o) for o in record.options or []]}  # fmt: skip
    if task == "sr":
        n_hist = len(inp)
        return {"texts": [item_text(x) for x in inp], "images": images[:n_hist],
                "option_texts": [item_text(o) for o in record.options or []], "option_images": images[n_hist:]}  # fmt: skip
    texts = {
        "ap": lambda: [f"{inp.get('question', '')} {inp.get('document', '')}"],
        "psi": lambda: [f"{inp.get('query', '')} | {inp.get('product title', '')}"],
        "mpc": lambda: [f"{inp.get('query', '')} | {inp.get('product title', '')}"],
        "sa": lambda: [str(inp.get("review", ""))],
        "prp": lambda: [str(inp.get("product 1", "")), str(inp.get("product 2", ""))],
    }[task]()
    return {"texts": texts, "images": images}


class CLIPRows(Dataset):
    """Rows with their images loaded and preprocessed (``None`` plus a reason when unavailable)."""

    def __init__(
        self, records: list[Record], image_processor: Any, root: Path, limits: ImageLimits
    ):
        self.records, self.processor, self.root, self.limits = (
            records,
            image_processor,
            root,
            limits,
        )

    def __len__(self) -> int:
        return len(self.records)

    def _pixels(self, ref: str) -> torch.Tensor | None:
        try:
            img = load_image(ref, self.root, self.limits)
        except ImageError:
            return None
        return self.processor(images=[img], return_tensors="pt")["pixel_values"][0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        ex = clip_example(r)
        refs = ex["images"] + ex.get("option_images", [])
        return {"record": r, "example": ex, "pixels": [self._pixels(ref) for ref in refs]}


def collate_clip(items: list[dict], tokenizer: Any, label_index: dict[str, dict[str, int]],
                 max_tokens: int = 77) -> dict[str, Any]:  # fmt: skip
    """Flatten a batch's texts and images; keep each row's layout as index lists.

    Returns:
        ``input_ids``/``attention_mask`` (every text), ``pixel_values`` and ``image_mask`` (every
        image slot), ``rows`` (per row: task, text and image indices, option indices for choice tasks,
        target, metadata), and the counts ``truncated_texts`` and ``missing_images``.
    """
    texts: list[str] = []
    pixels: list[torch.Tensor | None] = []
    rows = []
    for item in items:
        r, ex = item["record"], item["example"]
        t0, i0 = len(texts), len(pixels)
        texts += ex["texts"]
        pixels += item["pixels"]
        row = {"task": r.task, "texts": list(range(t0, len(texts))),
               "images": list(range(i0, i0 + len(ex["images"])))}  # fmt: skip
        if r.task == "cc":
            o0 = len(texts)
            texts += ex["options"]
            row["option_texts"] = list(range(o0, len(texts)))
        elif r.task == "sr":
            o0 = len(texts)
            texts += ex["option_texts"]
            row["option_texts"] = list(range(o0, len(texts)))
            row["option_images"] = list(range(i0 + len(ex["images"]), len(pixels)))
        if TASKS[r.task].metric_kind == CHOICE:
            labels = [option_label(o) for o in r.options or []]
        else:
            labels = list(label_index[r.task])
        row["labels"] = labels
        row["target"] = labels.index(r.output)
        row["meta"] = {"id": r.id, "task": r.task, "split": r.split, "gold": r.output,
                       "prompt": " || ".join(ex["texts"]), "options": list(r.options or []),
                       "images": list(r.images), "captions": [], "caption_used": [], "votes": []}  # fmt: skip
        rows.append(row)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
    )
    shape = next((p.shape for p in pixels if p is not None), None)
    mask = torch.tensor([p is not None for p in pixels], dtype=torch.bool)
    if shape is None:
        pixel_values = torch.zeros((len(pixels), 3, 1, 1))
    else:
        pixel_values = torch.stack([p if p is not None else torch.zeros(shape) for p in pixels])
    return {
        "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
        "pixel_values": pixel_values, "image_mask": mask, "rows": rows,
        "truncated_texts": sum(n > max_tokens for n in lengths), "missing_images": int((~mask).sum()),
    }  # fmt: skip
