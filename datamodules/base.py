"""CaslieDataModule: what both DataModules share: rank-aware batch samplers, resume, split checks.

A subclass loads its rows in ``prepare_data``/``setup`` and says how a split becomes a loader
(:meth:`make_loader`), how many rows each split has (:meth:`split_sizes`) and which labels a model
may answer (:attr:`labels`); training, validation and test loaders, the resume position and the
check for empty evaluation splits are the same for every model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from caslie.config import DataConfig
from caslie.data.sampler import LengthGroupedBatchSampler
from caslie.errors import CaslieError, DataError

SKIPPED_ROWS_FILE = "skipped.jsonl"
"""The run folder's list of the rows its data load dropped as invalid (``data.on_error=skip``)."""


class CaslieDataModule(L.LightningDataModule):
    """Base of the MMECInstruct DataModules.

    Batches are dealt per rank by :class:`LengthGroupedBatchSampler`, so run the Trainer with
    ``use_distributed_sampler=False``.

    Args:
        cfg: The data config.
        micro_batch_size: Training examples per device per step.
        eval_batch_size: Examples per device per evaluation batch.
        seed: Shuffling seed.
    """

    def __init__(self, cfg: DataConfig, micro_batch_size: int, eval_batch_size: int, seed: int):
        super().__init__()
        self.cfg = cfg
        self.micro_batch_size, self.eval_batch_size, self.seed = (
            micro_batch_size,
            eval_batch_size,
            seed,
        )
        self._resume: tuple[int, int] | None = None
        self._prepare_error: CaslieError | None = None

    # ------------------------------------------------------------------ errors of the data build

    @contextlib.contextmanager
    def shared_errors(self) -> Iterator[None]:
        """Keep a user error raised in ``prepare_data`` (which runs on one rank per node) for
        :meth:`raise_shared_errors`, so that every rank stops on it, not only the one that built."""
        try:
            yield
        except CaslieError as err:
            self._prepare_error = err

    def raise_shared_errors(self) -> None:
        """Raise the data build's error on every rank (call first in ``setup``).

        The building rank raises its own error; the others raise a :class:`DataError` with the
        same message, so no rank is left waiting for the others or dies with a traceback.
        """
        mine = self._prepare_error
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            messages: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(messages, str(mine) if mine is not None else None)
            first = next((m for m in messages if m), None)
            if mine is None and first is not None:
                raise DataError(first)
        if mine is not None:
            raise mine

    # --------------------------------------------------------------------- what subclasses define

    def split_sizes(self) -> dict[str, int]:
        """Rows per split (after ``setup``)."""
        raise NotImplementedError

    def make_loader(self, split: str, batch_size: int, stage: str) -> DataLoader:
        """The loader of ``split`` for ``stage``: ``train`` (shuffled), ``val_loss`` (training
        batches of val, in order) or ``predict`` (evaluation batches)."""
        raise NotImplementedError

    @property
    def labels(self) -> dict[str, list[str]]:
        """``{task: labels}`` a model may answer, over every loaded split (after ``setup``)."""
        raise NotImplementedError

    @property
    def manifest(self) -> dict[str, Any]:
        """What the data load counted (rows per task and split, skips, caption used %)."""
        raise NotImplementedError

    @property
    def data_fingerprint(self) -> dict[str, str]:
        """A hash per input of the data (:func:`caslie.data.pipeline.fingerprint_parts`), kept in
        every checkpoint so that a resume on changed data is caught (after ``setup``)."""
        return dict(self.manifest.get("fingerprint_parts", {}))

    # ----------------------------------------------------------------------------------- shared

    def rank_world(self) -> tuple[int, int]:
        """This process's rank and the world size (0, 1 without a Trainer)."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def batch_sampler(
        self, lengths: Any, batch_size: int, shuffle: bool, group_by_length: bool
    ) -> LengthGroupedBatchSampler:
        """The sampler a loader uses on this rank."""
        rank, world = self.rank_world()
        return LengthGroupedBatchSampler(
            lengths, batch_size, shuffle=shuffle, group_by_length=group_by_length,
            seed=self.seed, rank=rank, world_size=world,
        )  # fmt: skip

    def require_split(self, split: str) -> None:
        """Raise :class:`DataError` when ``split`` has no rows."""
        sizes = self.split_sizes()
        if not sizes.get(split):
            have = ", ".join(s for s, n in sizes.items() if n) or "none"
            raise DataError(
                f"split '{split}' has no rows for tasks {self.cfg.tasks} in {self.cfg.source} "
                f"(splits with rows: {have})"
            )

    def check_eval_splits(self) -> None:
        """Fail before training when a split in ``data.eval_splits`` has no rows.

        Raises:
            DataError: naming the empty splits and the setting to change.
        """
        sizes = self.split_sizes()
        empty = [s for s in self.cfg.eval_splits if not sizes.get(s)]
        if empty:
            keep = ",".join(s for s in self.cfg.eval_splits if s not in empty)
            raise DataError(
                f"evaluation split(s) {empty} have no rows for tasks {self.cfg.tasks} in "
                f"{self.cfg.source}; remove them from data.eval_splits (e.g. data.eval_splits=[{keep}])"
            )

    def write_skipped_rows(self, rows: list[dict[str, Any]]) -> Path | None:
        """Write ``<run>/skipped.jsonl``: one JSON object per row the load dropped as invalid
        (``location``, ``file``, ``line``, ``row``, ``id``, ``field``, ``reason``), on rank zero.

        The run folder is the Trainer's ``default_root_dir`` (train.py sets it to the run folder);
        without a Trainer, or with no dropped rows, nothing is written (a stale file from an earlier
        load of the run is removed).

        Returns:
            The file written, or ``None``.
        """
        if self.trainer is None or not self.trainer.is_global_zero:
            return None
        path = Path(self.trainer.default_root_dir) / SKIPPED_ROWS_FILE
        if not rows:
            path.unlink(missing_ok=True)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        tmp.replace(path)  # a reader never sees half a file
        return path

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Start training at batch ``batches_done`` of epoch ``epoch`` (set from a checkpoint)."""
        self._resume = (epoch, batches_done)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; after :meth:`resume_at`, the first epoch iterated skips the
        batches already trained on."""
        self.require_split(self.cfg.train_split)
        loader = self.make_loader(self.cfg.train_split, self.micro_batch_size, "train")
        if self._resume is not None:
            loader.batch_sampler.start_at(*self._resume)
            self._resume = None
        return loader

    def eval_dataloader(self, split: str) -> DataLoader:
        """Evaluation batches of ``split`` (prompts to answer, or rows to predict)."""
        self.require_split(split)
        return self.make_loader(split, self.eval_batch_size, "predict")

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per split in ``data.eval_splits`` (val, test IND, test OOD)."""
        self.check_eval_splits()
        return [self.eval_dataloader(s) for s in self.cfg.eval_splits]

    def loader(self, dataset: Any, sampler: Any, collate: Any, num_workers: int) -> DataLoader:
        """A DataLoader over ``dataset`` with a batch sampler (workers kept between epochs).

        It draws its workers' seeds from its own generator: by default each new iterator (each
        epoch, each evaluation) takes a number from the global RNG, which training draws from too
        (dropout), so where a resumed run creates its iterators would change what training draws.
        """
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, generator=generator,
                          num_workers=num_workers, persistent_workers=num_workers > 0)  # fmt: skip
