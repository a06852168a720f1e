"""In-memory loaders: tensors stay where they are (on the device) and batches are slices.

Per-sample `Dataset.__getitem__` plus default collate costs more than a whole step of these
small problems, so neither is used anywhere in descend. Training loaders hand out groups of
steps (`StepGroup`, planned by `StepPlan` so that step events fall between groups); they have
no `len()`, so that Lightning ends an epoch when the groups run out rather than by a count of
batches (the groups of one epoch need not number the same as the next's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
import torch

from descend.stepping import StepGroup, StepPlan


class RepeatBatch:
    """The same full batch for `steps` optimiser steps: one "epoch" of a full-batch task.

    The batch is built once; nothing is copied or collated per step."""

    def __init__(self, batch: tuple[torch.Tensor, ...], steps: int, plan: StepPlan) -> None:
        self.batch = batch
        self.steps = steps
        self.plan = plan

    def steps_left(self, global_step: int) -> int:
        """Steps until this epoch ends (every epoch is `steps` long, from step 0)."""
        return self.steps - global_step % self.steps

    def __iter__(self) -> Iterator[StepGroup]:
        for size in self.plan.sizes(self.steps_left(self.plan.trainer.global_step)):
            yield StepGroup([self.batch] * size)


class TensorBatches:
    """Mini-batches sliced from in-memory tensors, optionally shuffled and sharded.

    The permutation of epoch e is drawn from `seed_fn(e)`, e = `epoch_fn()` at the start of
    each pass, so a run is reproducible and a resumed run sees the same order. Under data parallelism each rank takes every `world_size`-th sample
    of the same permutation and a batch of `batch_size // world_size`, so the global batch
    matches a single process.
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        batch_size: int,
        shuffle: bool = False,
        seed_fn: Callable[[int], int] = lambda epoch: epoch,
        epoch_fn: Callable[[], int] = lambda: 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.tensors = tensors
        self.shuffle = shuffle
        self.seed_fn = seed_fn
        self.epoch_fn = epoch_fn
        self.rank = rank
        self.world_size = world_size
        n = len(tensors[0])
        # every rank gets the same number of samples, or DDP ranks would fall out of step
        self.per_rank = n // world_size if world_size > 1 else n
        self.batch_size = max(1, batch_size // world_size)

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's sample indices for one pass, in the order of that epoch (default: the current one)."""
        n = len(self.tensors[0])
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed_fn(self.epoch_fn() if epoch is None else epoch))
            order = torch.randperm(n, generator=generator).to(self.tensors[0].device)
        else:
            order = torch.arange(n, device=self.tensors[0].device)
        return order[: self.per_rank * self.world_size][self.rank :: self.world_size]

    def batch(self, order: torch.Tensor, index: int) -> tuple[torch.Tensor, ...]:
        rows = order[index * self.batch_size : (index + 1) * self.batch_size]
        return tuple(t[rows] for t in self.tensors)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self.order()
        return (self.batch(order, i) for i in range(len(self)))


class GroupedBatches:
    """A training pass over `TensorBatches` as groups of mini-batches, one per optimiser step.

    Its position (the epoch, the permutation's seed and the batches trained) is part of every
    checkpoint: Lightning saves and restores a training loader's state_dict, so a run resumed
    mid-epoch continues with the next batch of the same order.
    """

    def __init__(self, batches: TensorBatches, plan: StepPlan) -> None:
        self.batches = batches
        self.plan = plan
        self._epoch = 0
        self._epoch_start_step = 0
        self._restored: dict[str, int] | None = None

    @property
    def steps(self) -> int:
        """Optimiser steps per epoch: one per mini-batch (as RepeatBatch.steps)."""
        return len(self.batches)

    def steps_left(self, global_step: int) -> int:
        return len(self.batches) - (self._restored["consumed"] if self._restored else global_step % len(self.batches))

    def state_dict(self) -> dict[str, int]:
        # counted from the trainer, not from what was handed out: Lightning fetches a batch
        # ahead, so the next group may already be sliced when a checkpoint is taken
        consumed = self.plan.trainer.global_step - self._epoch_start_step
        return {"epoch": self._epoch, "seed": self.batches.seed_fn(self._epoch), "consumed": consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._restored = dict(state) if state["consumed"] < len(self.batches) else None

    def __iter__(self) -> Iterator[StepGroup]:
        # One step is one batch, so the position follows from the global step too. That covers
        # the checkpoints Lightning resumes without handing back this state (taken on an epoch's
        # end, it resumes at the next epoch, and asks for this iterator before it counts it).
        restored, self._restored = self._restored, None
        if restored:
            self._epoch, first = restored["epoch"], restored["consumed"]
        else:
            self._epoch, first = divmod(self.plan.trainer.global_step, len(self.batches))
        self._epoch_start_step = self.plan.trainer.global_step - first
        order = self.batches.order(self._epoch)
        for size in self.plan.sizes(len(self.batches) - first):
            yield StepGroup([self.batches.batch(order, i) for i in range(first, first + size)])
            first += size
