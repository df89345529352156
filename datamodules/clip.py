"""CLIPDataModule: MMECInstruct rows as texts + product images for the FashionCLIP baseline.

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

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from caslie.config import DataConfig
from caslie.data.records import Record, default_image_root, load_records
from caslie.data.sampler import LengthGroupedBatchSampler
from caslie.images import ImageError, ImageLimits, load_image
from caslie.slots import item_text
from caslie.tasks import CHOICE, TASKS, option_label


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


class CLIPDataModule(L.LightningDataModule):
    """The MMECInstruct splits for CLIP: one task (task-specific) or all (one head per task).

    Args:
        cfg: The data config (source, tasks, splits, image root).
        tokenizer: The CLIP tokenizer.
        image_processor: The CLIP image processor.
        micro_batch_size: Training rows per device per step.
        eval_batch_size: Rows per device per evaluation batch.
        seed: Shuffling seed.
        max_tokens: The text model's token limit.
    """

    def __init__(self, cfg: DataConfig, tokenizer: Any, image_processor: Any, micro_batch_size: int = 32,
                 eval_batch_size: int = 64, seed: int = 42, max_tokens: int = 77):  # fmt: skip
        super().__init__()
        self.cfg, self.tokenizer, self.image_processor = cfg, tokenizer, image_processor
        self.micro_batch_size, self.eval_batch_size, self.seed, self.max_tokens = (
            micro_batch_size, eval_batch_size, seed, max_tokens)  # fmt: skip
        records, self.report = load_records(cfg, splits=[cfg.train_split, *cfg.eval_splits])
        self.by_split: dict[str, list[Record]] = {}
        for r in records:
            self.by_split.setdefault(r.split, []).append(r)
        self.label_index: dict[str, dict[str, int]] = {}
        for r in records:
            if TASKS[r.task].metric_kind != CHOICE:
                self.label_index.setdefault(r.task, {})
                for label in sorted(r.labels()):
                    self.label_index[r.task].setdefault(label, len(self.label_index[r.task]))
        self.root = Path(cfg.image_root) if cfg.image_root else default_image_root(cfg.source)
        self._resume: tuple[int, int] | None = None

    @property
    def manifest(self) -> dict[str, Any]:
        """Rows per task and split."""
        rows: dict[str, int] = {}
        for split, recs in self.by_split.items():
            for r in recs:
                rows[f"{r.task}/{split}"] = rows.get(f"{r.task}/{split}", 0) + 1
        return {"rows": rows, "caption_used_pct": {}, "skipped": dict(self.report.skipped)}

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        records = self.by_split.get(split, [])
        if not records:
            raise ValueError(
                f"split '{split}' has no rows for tasks {self.cfg.tasks} in {self.cfg.source}"
            )
        trainer = getattr(self, "_trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = LengthGroupedBatchSampler([1] * len(records), batch_size, shuffle=shuffle, group_by_length=False,
                                            seed=self.seed, rank=rank, world_size=world)  # fmt: skip
        dataset = CLIPRows(records, self.image_processor, self.root, ImageLimits(size=500))

        def collate(items: list[dict]) -> dict[str, Any]:
            return collate_clip(items, self.tokenizer, self.label_index, self.max_tokens)

        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.cfg.num_workers,
                          persistent_workers=self.cfg.num_workers > 0)  # fmt: skip

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Start training at batch ``batches_done`` of epoch ``epoch`` (set from a checkpoint)."""
        self._resume = (epoch, batches_done)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training rows (after :meth:`resume_at`, the batches already done are skipped)."""
        loader = self._loader(self.cfg.train_split, self.micro_batch_size, True)
        if self._resume is not None:
            loader.batch_sampler.start_at(*self._resume)
            self._resume = None
        return loader

    def val_dataloader(self) -> list[DataLoader]:
        """Val rows (loss and predictions), when val is an evaluation split."""
        return (
            [self._loader("val", self.eval_batch_size, False)]
            if "val" in self.cfg.eval_splits
            else []
        )

    def test_dataloader(self) -> list[DataLoader]:
        """Every evaluation split."""
        return [self._loader(s, self.eval_batch_size, False) for s in self.cfg.eval_splits]
