"""CLIPDataModule: MMECInstruct rows as texts + product images for the FashionCLIP baseline."""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from caslie.config import DataConfig
from caslie.data.clip import CLIPRows, collate_clip, label_index
from caslie.data.pipeline import fingerprint_parts
from caslie.data.records import LoadReport, load_records
from caslie.data.sources import default_image_root
from caslie.images import ImageLimits
from caslie.record import Record
from datamodules.base import CaslieDataModule


class CLIPDataModule(CaslieDataModule):
    """The MMECInstruct splits for CLIP: one task (task-specific) or all (one head per task).

    Rows are loaded and validated in ``setup``; images are read and preprocessed in the loader
    workers, resized first to fit ``data.image_size``.

    Args:
        cfg: The data config (source, tasks, splits, image root, image size).
        tokenizer: The CLIP tokenizer.
        image_processor: The CLIP image processor.
        micro_batch_size: Training rows per device per step.
        eval_batch_size: Rows per device per evaluation batch.
        seed: Shuffling seed.
        max_tokens: The text model's token limit.
    """

    def __init__(self, cfg: DataConfig, tokenizer: Any, image_processor: Any, micro_batch_size: int = 32,
                 eval_batch_size: int = 64, seed: int = 42, max_tokens: int = 77):  # fmt: skip
        super().__init__(cfg, micro_batch_size, eval_batch_size, seed)
        self.tokenizer, self.image_processor, self.max_tokens = (
            tokenizer,
            image_processor,
            max_tokens,
        )
        self.by_split: dict[str, list[Record]] | None = None
        self.label_index: dict[str, dict[str, int]] = {}
        self.report: LoadReport | None = None
        self.fingerprint_parts: dict[str, str] = {}
        self.root = Path(cfg.image_root) if cfg.image_root else default_image_root(cfg.source)

    def setup(self, stage: str | None = None) -> None:
        """Load and validate the rows of the training and evaluation splits."""
        if self.by_split is None:
            records, self.report = load_records(
                self.cfg, splits=[self.cfg.train_split, *self.cfg.eval_splits]
            )
            by_split: dict[str, list[Record]] = {}
            for r in records:
                by_split.setdefault(r.split, []).append(r)
            self.by_split = by_split
            self.label_index = label_index(records)
            self.fingerprint_parts = fingerprint_parts(
                self.cfg, None, [self.cfg.train_split, *self.cfg.eval_splits]
            )
        self.check_eval_splits()
        self.write_skipped_rows(self.report.skipped_rows if self.report is not None else [])

    def _rows(self) -> dict[str, list[Record]]:
        if self.by_split is None:
            raise RuntimeError("CLIPDataModule.setup() has not run yet")
        return self.by_split

    def split_sizes(self) -> dict[str, int]:
        return {split: len(rows) for split, rows in self._rows().items()}

    @property
    def labels(self) -> dict[str, list[str]]:
        return {task: list(index) for task, index in self.label_index.items()}

    @property
    def manifest(self) -> dict[str, Any]:
        rows = Counter(f"{r.task}/{split}" for split, recs in self._rows().items() for r in recs)
        skipped = dict(self.report.skipped) if self.report is not None else {}
        return {"rows": dict(sorted(rows.items())), "caption_used_pct": {}, "skipped": skipped,
                "fingerprint_parts": self.fingerprint_parts}  # fmt: skip

    def make_loader(self, split: str, batch_size: int, stage: str) -> DataLoader:
        records = self._rows()[split]
        sampler = self.batch_sampler([1] * len(records), batch_size, shuffle=stage == "train",
                                     group_by_length=False)  # fmt: skip
        limits = ImageLimits(size=self.cfg.image_size, allow_private=self.cfg.allow_private_urls)
        dataset = CLIPRows(records, self.image_processor, self.root, limits)
        collate = partial(collate_clip, tokenizer=self.tokenizer, label_index=self.label_index,
                          max_tokens=self.max_tokens)  # fmt: skip
        return self.loader(dataset, sampler, collate, self.cfg.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        """Val rows (loss and predictions), when val is an evaluation split."""
        return [self.eval_dataloader("val")] if "val" in self.cfg.eval_splits else []
