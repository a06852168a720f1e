"""In-memory loaders: tensors stay where they are (on the device) and batches are slices.

Per-sample `Dataset.__getitem__` plus default collate costs more than a whole
step of these small problems, so neither is used anywhere in descend.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator

import torch


class RepeatBatch:
    """Yields the same full batch `steps` times: one "epoch" of a full-batch task.

    The batch is built once; nothing is copied or collated per step.
    """

    def __init__(self, batch: tuple[torch.Tensor, ...], steps: int) -> None:
        self.batch = batch
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return itertools.repeat(self.batch, self.steps)


class TensorBatches:
    """Mini-batches sliced from in-memory tensors, optionally shuffled and sharded.

    The permutation is drawn from `seed_fn()` at the start of each pass, so a
    run is reproducible and a resumed run sees the same order (the task passes
    a seed that depends on the current epoch). Under data parallelism each rank
    takes every `world_size`-th sample of the same permutation and a batch of
    `batch_size // world_size`, so the global batch matches a single process.
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        batch_size: int,
        shuffle: bool = False,
        seed_fn: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.tensors = tensors
        self.shuffle = shuffle
        self.seed_fn = seed_fn
        self.rank = rank
        self.world_size = world_size
        n = len(tensors[0])
        # every rank gets the same number of samples, or DDP ranks would fall out of step
        self.per_rank = n // world_size if world_size > 1 else n
        self.batch_size = max(1, batch_size // world_size)

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.tensors[0])
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed_fn())
            order = torch.randperm(n, generator=generator).to(self.tensors[0].device)
        else:
            order = torch.arange(n, device=self.tensors[0].device)
        order = order[: self.per_rank * self.world_size][self.rank :: self.world_size]
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield tuple(t[index] for t in self.tensors)
