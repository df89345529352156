"""MMECDataModule: the tokenised MMECInstruct splits for the LoRA models (generalist or task-specific)."""

from __future__ import annotations

from functools import partial
from typing import Any

from torch.utils.data import DataLoader

from caslie.config import DataConfig
from caslie.data.packing import collate_training
from caslie.data.pipeline import BuiltData, build_dataset
from caslie.data.tokenize import collate_generate
from datamodules.base import CaslieDataModule


class MMECDataModule(CaslieDataModule):
    """Tokenised MMECInstruct splits with length-grouped, dynamically padded batches.

    ``data.tasks`` selects the generalist (all tasks) or a task-specific model. The build runs once
    per node in ``prepare_data`` and is memory-mapped from the cache in ``setup`` on every rank.

    Args:
        cfg: The data config.
        tokenizer: A tokenizer with EOS and a pad token.
        micro_batch_size: Training examples per device per step.
        eval_batch_size: Prompts per device per generation batch.
        seed: Shuffling seed.
        generate_on_val: Add a generation loader over val to ``val_dataloader``.
        context_length: The model's context: longer evaluation examples are skipped and counted.
    """

    def __init__(self, cfg: DataConfig, tokenizer: Any, micro_batch_size: int = 4,
                 eval_batch_size: int = 16, seed: int = 42, generate_on_val: bool = False,
                 context_length: int | None = None):  # fmt: skip
        super().__init__(cfg, micro_batch_size, eval_batch_size, seed)
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; load it with caslie.pretrained.load_tokenizer"
            )
        self.tokenizer = tokenizer
        self.generate_on_val = generate_on_val
        self.context_length = context_length
        self.built: BuiltData | None = None

    def prepare_data(self) -> None:
        """Build the tokenised cache (once per node)."""
        with self.shared_errors():
            build_dataset(self.cfg, self.tokenizer, context_length=self.context_length)

    def setup(self, stage: str | None = None) -> None:
        """Open the cached splits and check that every evaluation split has rows."""
        self.raise_shared_errors()
        if self.built is None:
            self.built = build_dataset(self.cfg, self.tokenizer, context_length=self.context_length)
        self.check_eval_splits()
        self.write_skipped_rows(self.manifest.get("skipped_rows", []))

    @property
    def splits(self) -> dict:
        """The tokenised splits (after ``setup``)."""
        if self.built is None:
            raise RuntimeError("MMECDataModule.setup() has not run yet")
        return self.built.splits

    def split_sizes(self) -> dict[str, int]:
        return {split: len(ds) for split, ds in self.splits.items()}

    @property
    def labels(self) -> dict[str, list[str]]:
        labels: dict[str, set[str]] = {}
        for ds in self.splits.values():
            for task, target in zip(ds["task"], ds["target"], strict=True):
                labels.setdefault(task, set()).add(target)
        return {task: sorted(labs) for task, labs in labels.items()}

    @property
    def manifest(self) -> dict[str, Any]:
        if self.built is None:
            raise RuntimeError("MMECDataModule.setup() has not run yet")
        return self.built.manifest

    def make_loader(self, split: str, batch_size: int, stage: str) -> DataLoader:
        """Training and val-loss batches carry answer-only labels, right-padded or (with
        ``data.packing``) packed into one padding-free row; prediction batches are left-padded
        prompts, longest first."""
        pad, multiple = self.tokenizer.pad_token_id, self.cfg.pad_to_multiple_of
        if stage == "predict":
            collate = partial(collate_generate, pad_id=pad, multiple=multiple)
        else:
            collate = partial(collate_training, pad_id=pad, multiple=multiple,
                              packed=self.cfg.packing)  # fmt: skip
        sampler = self.batch_sampler(
            self.splits[split]["length"], batch_size, shuffle=stage == "train",
            group_by_length=self.cfg.group_by_length,
        )  # fmt: skip
        return self.loader(self.splits[split], sampler, collate, self.cfg.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        """Loader 0: val batches for the teacher-forced loss; loader 1 (with ``generate_on_val``):
        left-padded val prompts for generation. No loader when ``val`` is not an evaluation split."""
        if "val" not in self.cfg.eval_splits:
            return []
        self.require_split("val")
        loaders = [self.make_loader("val", self.micro_batch_size, "val_loss")]
        if self.generate_on_val:
            loaders.append(self.eval_dataloader("val"))
        return loaders
