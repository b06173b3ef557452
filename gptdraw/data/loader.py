"""Which examples each training step reads: seeded per-epoch permutations, split across ranks.

The training data is one stream of example indices: epoch 0's permutation, then epoch 1's,
and so on, each permutation drawn from `np.random.default_rng([seed, epoch])` and cut to a
whole number of global batches (the last partial batch of an epoch is dropped; the next
epoch's permutation differs, so no example is left out for good). Global batch j is stream
positions [j·B, (j+1)·B); rank r of W reads its slice [r·B/W, (r+1)·B/W) of it.

Everything follows from (seed, epoch, position), so a run resumes exactly: `batches(k)`
continues from global sample k, the count of samples the run had consumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class BatchIndices:
    """One step's examples for this rank."""

    epoch: int  # epoch of the batch's first sample
    step: int  # batch number within that epoch (position // batch_size when aligned)
    sample: int  # global stream position of the batch's first sample; resume at sample + batch_size
    indices: np.ndarray  # int64 (batch_size // world_size,): example indices for this rank


class EpochBatches:
    """Global batches of `batch_size` indices over a dataset of `dataset_len`, sliced per rank."""

    def __init__(self, dataset_len: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"the global batch size {batch_size} must be a positive multiple of world_size {world_size}")
        if dataset_len < batch_size:
            raise ValueError(f"the dataset has {dataset_len} examples, fewer than one global batch of {batch_size}")
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.per_rank = batch_size // world_size
        self.steps_per_epoch = dataset_len // batch_size
        self.samples_per_epoch = self.steps_per_epoch * batch_size
        self._cached: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of epoch `epoch`: a permutation of all indices (int64)."""
        if self._cached is None or self._cached[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.dataset_len).astype(np.int64)
            self._cached = (epoch, order)
        return self._cached[1]

    def global_batch(self, epoch: int, step: int) -> np.ndarray:
        """All ranks' indices of step `step` in epoch `epoch`, (batch_size,)."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} is out of range: an epoch has {self.steps_per_epoch} steps")
        return self.permutation(epoch)[step * self.batch_size:(step + 1) * self.batch_size]

    def indices(self, epoch: int, step: int) -> np.ndarray:
        """This rank's slice of step `step` in epoch `epoch`, (batch_size // world_size,)."""
        return self._slice(self.global_batch(epoch, step))

    def _slice(self, batch: np.ndarray) -> np.ndarray:
        return batch[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]

    def _stream(self, start: int, count: int) -> np.ndarray:
        """Stream positions [start, start + count): across an epoch boundary when needed."""
        parts = []
        while count > 0:
            epoch, offset = divmod(start, self.samples_per_epoch)
            take = min(count, self.samples_per_epoch - offset)
            parts.append(self.permutation(epoch)[offset:offset + take])
            start, count = start + take, count - take
        return np.concatenate(parts)

    def batches(self, start_sample: int = 0, epochs: int | None = None) -> Iterator[BatchIndices]:
        """This rank's batches from global sample `start_sample` on, for `epochs` epochs (or forever)."""
        if start_sample < 0:
            raise ValueError(f"start_sample must be non-negative, got {start_sample}")
        end = None if epochs is None else epochs * self.samples_per_epoch
        sample = start_sample
        while end is None or sample + self.batch_size <= end:
            epoch, offset = divmod(sample, self.samples_per_epoch)
            batch = self._stream(sample, self.batch_size)
            yield BatchIndices(epoch=epoch, step=offset // self.batch_size, sample=sample, indices=self._slice(batch))
            sample += self.batch_size
