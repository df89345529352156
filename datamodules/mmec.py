"""MMECDataModule: the LightningDataModule over MMECInstruct (generalist or task-specific)."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from caslie.config import DataConfig
from caslie.data.pipeline import BuiltData, build_dataset
from caslie.data.records import DataError
from caslie.data.sampler import LengthGroupedBatchSampler
from caslie.data.tokenize import collate_generate, collate_train


class MMECDataModule(L.LightningDataModule):
    """Tokenised MMECInstruct splits with length-grouped, dynamically padded batches.

    ``data.tasks`` selects the generalist (all tasks) or a task-specific model. The build runs once
    in ``prepare_data`` (local rank zero) and is memory-mapped from the cache in ``setup`` on every
    rank. Batches are dealt per rank by :class:`LengthGroupedBatchSampler`, so run the Trainer with
    ``use_distributed_sampler=False``.

    Args:
        cfg: The data config.
        tokenizer: A tokenizer with EOS and a pad token.
        micro_batch_size: Training examples per device per step.
        eval_batch_size: Prompts per device per generation batch.
        seed: Shuffling seed.
        generate_on_val: Add a generation loader over val to ``val_dataloader``.
    """

    def __init__(self, cfg: DataConfig, tokenizer: Any, micro_batch_size: int = 4,
                 eval_batch_size: int = 16, seed: int = 42, generate_on_val: bool = False):  # fmt: skip
        super().__init__()
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; load it with caslie.offline.load_tokenizer"
            )
        self.cfg, self.tokenizer = cfg, tokenizer
        self.micro_batch_size, self.eval_batch_size, self.seed = (
            micro_batch_size,
            eval_batch_size,
            seed,
        )
        self.generate_on_val = generate_on_val
        self.built: BuiltData | None = None
        self._resume: tuple[int, int] | None = None

    def prepare_data(self) -> None:
        """Build the tokenised cache (once per node)."""
        build_dataset(self.cfg, self.tokenizer)

    def setup(self, stage: str | None = None) -> None:
        """Open the cached splits."""
        if self.built is None:
            self.built = build_dataset(self.cfg, self.tokenizer)

    @property
    def splits(self) -> dict:
        """The tokenised splits (after ``setup``)."""
        if self.built is None:
            self.setup()
        assert self.built is not None
        return self.built.splits

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def batch_sampler(
        self, split: str, batch_size: int, shuffle: bool
    ) -> LengthGroupedBatchSampler:
        """The sampler a loader of ``split`` uses on this rank."""
        rank, world = self._rank_world()
        return LengthGroupedBatchSampler(
            self.splits[split]["length"], batch_size, shuffle=shuffle,
            group_by_length=self.cfg.group_by_length, seed=self.seed, rank=rank, world_size=world,
        )  # fmt: skip

    def _loader(
        self, split: str, batch_size: int, shuffle: bool, collate, cls=DataLoader
    ) -> DataLoader:
        if split not in self.splits:
            raise ValueError(
                f"split '{split}' has no rows for tasks {self.cfg.tasks} in {self.cfg.source} "
                f"(available: {', '.join(self.splits) or 'none'})"
            )
        pad, multiple = self.tokenizer.pad_token_id, self.cfg.pad_to_multiple_of
        return cls(
            self.splits[split],
            batch_sampler=self.batch_sampler(split, batch_size, shuffle),
            collate_fn=partial(collate, pad_id=pad, multiple=multiple),
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Start training at batch ``batches_done`` of epoch ``epoch`` (set from a checkpoint)."""
        self._resume = (epoch, batches_done)

    def train_dataloader(self) -> DataLoader:
        """Shuffled, length-grouped, right-padded training batches with answer-only labels.

        After :meth:`resume_at`, the first epoch iterated skips the batches already trained on.
        """
        loader = self._loader(self.cfg.train_split, self.micro_batch_size, True, collate_train)
        if self._resume is not None:
            loader.batch_sampler.start_at(*self._resume)
            self._resume = None
        return loader

    def val_dataloader(self) -> list[DataLoader]:
        """Loader 0: val batches for the teacher-forced loss; loader 1 (with ``generate_on_val``):
        left-padded val prompts for generation. No loader when ``val`` is not an evaluation split."""
        if "val" not in self.cfg.eval_splits:
            return []
        loaders = [self._loader("val", self.micro_batch_size, False, collate_train)]
        if self.generate_on_val:
            loaders.append(self.eval_dataloader("val"))
        return loaders

    def eval_dataloader(self, split: str) -> DataLoader:
        """Left-padded prompts of ``split`` for batched generation, longest first."""
        return self._loader(split, self.eval_batch_size, False, collate_generate)

    def check_eval_splits(self) -> None:
        """Fail before training when a split in ``data.eval_splits`` has no rows.

        Raises:
            DataError: naming the empty splits and the setting to change.
        """
        empty = [s for s in self.cfg.eval_splits if len(self.splits.get(s, ())) == 0]
        if empty:
            keep = ",".join(s for s in self.cfg.eval_splits if s not in empty)
            raise DataError(
                f"evaluation split(s) {empty} have no rows for tasks {self.cfg.tasks} in "
                f"{self.cfg.source}; remove them from data.eval_splits (e.g. data.eval_splits=[{keep}])"
            )

    def test_dataloader(self) -> list[DataLoader]:
        """Generation loaders for every split in ``data.eval_splits`` (val, test IND, test OOD)."""
        self.check_eval_splits()
        return [self.eval_dataloader(s) for s in self.cfg.eval_splits]
