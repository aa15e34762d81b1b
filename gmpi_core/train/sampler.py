"""A distributed, resumable batch sampler (docs/method.md §7 loader settings).

Like ``DistributedSampler(shuffle=True, seed=0, drop_last=True)`` + ``BatchSampler(drop_last=True)``: every
epoch the dataset indices are permuted with ``torch.randperm`` under ``seed + epoch``, cut to a multiple
of the number of ranks, and rank r takes every ``world_size``-th index starting at r; its shard is then
split into full batches. On top of that the sampler can start an epoch at a given batch, so a resumed run
sees exactly the batches the interrupted run would have seen next.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableDistributedSampler"]


class ResumableDistributedSampler(Sampler[list[int]]):
    """Yields lists of ``batch_size`` dataset indices: this rank's batches of the current epoch, from
    ``start_batch`` on. Use as ``DataLoader(dataset, batch_sampler=sampler)``."""

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        per_rank = dataset_len // world_size
        if per_rank < batch_size:
            raise ValueError(
                f"the dataset has {dataset_len} images, too few for {world_size} process(es) × batch "
                f"{batch_size}; use a smaller --batch, fewer processes or a larger dataset"
            )
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return (self.dataset_len // self.world_size) // self.batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (its permutation) and the batch to start at."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is outside [0, {self.batches_per_epoch}]")
        self.epoch = epoch
        self.start_batch = start_batch

    def shard(self) -> list[int]:
        """This rank's indices of the current epoch, in order (before batching)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        total = (self.dataset_len // self.world_size) * self.world_size  # drop_last across ranks
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        shard = self.shard()
        b = self.batch_size
        for i in range(self.start_batch, self.batches_per_epoch):
            yield shard[i * b : (i + 1) * b]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "start_batch": self.start_batch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed = int(state.get("seed", self.seed))
        self.set_epoch(int(state["epoch"]), int(state["start_batch"]))
