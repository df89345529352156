"""Length-grouped, rank-aware batch sampling: little padding, identical batch counts on every rank.

Examples are shuffled, cut into mega-batches of ``group`` global batches, sorted by length inside each
mega-batch, and cut into global batches of ``batch_size x world_size``; the global batches are then
shuffled. Each global batch is dealt to the ranks in turn, so all ranks see similar lengths at each
step. The longest global batch goes first, so an out-of-memory error shows at step one, not hours in.
When training examples do not fill the last global batch, indices from the start are repeated (as
``DistributedSampler`` does) so every rank runs the same number of full steps. Evaluation order is
longest first and is topped up only to a multiple of the world size (the last batch may be short);
evaluation deduplicates by row id.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of indices for one rank.

    Args:
        lengths: Token length of each example.
        batch_size: Examples per batch on one rank.
        shuffle: Shuffle (training) or keep a deterministic longest-first order (evaluation).
        group_by_length: Sort by length inside mega-batches; off gives plain random batches.
        seed: Base seed; the epoch is added, so every rank draws the same permutation.
        rank: This process's rank.
        world_size: Number of ranks.
        group: Global batches per mega-batch (larger: less padding, less randomness).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        group_by_length: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        group: int = 64,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size, self.shuffle, self.group_by_length = batch_size, shuffle, group_by_length
        self.seed, self.rank, self.world_size, self.group = seed, rank, world_size, group
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def resume(self, epoch: int, batches_done: int) -> None:
        """Skip the first ``batches_done`` batches the next time epoch ``epoch`` is iterated."""
        self._resume = (epoch, batches_done)

    def start_at(self, epoch: int, batches_done: int) -> None:
        """Continue a run saved after ``batches_done`` batches of ``epoch`` (the next epoch if it
        was done). Sets the epoch at once: Lightning may create the first iterator before it calls
        ``set_epoch``."""
        if batches_done >= len(self):
            epoch, batches_done = epoch + 1, 0
        self.set_epoch(epoch)
        self.resume(epoch, batches_done)

    @property
    def sampler(self) -> LengthGroupedBatchSampler:
        """Itself: Lightning calls ``set_epoch`` on ``loader.batch_sampler.sampler`` each epoch."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Draw a new order for ``epoch`` (call before each epoch)."""
        self.epoch = epoch

    def _global_batches(self) -> list[torch.Tensor]:
        n = len(self.lengths)
        if n == 0:
            return []
        step = self.batch_size * self.world_size
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        if not self.shuffle:
            order = torch.argsort(self.lengths, descending=True, stable=True)
        else:
            order = torch.randperm(n, generator=gen)
        # Training tops up to full global batches; evaluation only to equal shares per rank.
        pad = (-n) % (step if self.shuffle else self.world_size)
        if pad:  # repeat from the start
            order = torch.cat(
                [order, order[:pad].clone() if pad <= n else order.repeat(pad // n + 1)[:pad]]
            )
        if self.group_by_length and self.shuffle:
            chunks = []
            for mega in order.split(step * self.group):
                chunks.append(mega[torch.argsort(self.lengths[mega], descending=True, stable=True)])
            order = torch.cat(chunks)
        batches = list(order.split(step))
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=gen).tolist()
            batches = [batches[i] for i in perm]
            longest = max(range(len(batches)), key=lambda i: int(self.lengths[batches[i]].max()))
            batches.insert(0, batches.pop(longest))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip, self._resume = self._resume[1], None
        for glob in self._global_batches()[skip:]:
            yield glob[self.rank :: self.world_size].tolist()

    def __len__(self) -> int:
        step = self.batch_size * self.world_size
        return -(-len(self.lengths) // step)


def padding_share(lengths: Sequence[int], batches: list[list[int]], multiple: int = 8) -> float:
    """Share of padding tokens in ``batches`` padded to their longest example (rounded up)."""
    real = padded = 0
    for batch in batches:
        lens = [int(lengths[i]) for i in batch]
        width = -(-max(lens) // multiple) * multiple
        real += sum(lens)
        padded += width * len(lens)
    return 1.0 - real / padded if padded else 0.0
