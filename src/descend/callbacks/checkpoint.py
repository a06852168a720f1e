"""Checkpoints at step multiples, no more often than a time interval, and always at the end."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from descend import stopping


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with three changes:

    - `min_interval_s`: a checkpoint falls on a multiple of `every_n_train_steps` (so a resumed
      run restarts at an exact step), but only once `min_interval_s` seconds have passed since
      the last one: a 20 000-step run of a small problem would otherwise spend more time writing
      checkpoints than training, while a killed run still loses at most that long.
    - last.ckpt at the final step: Lightning writes it at the end of training only if it never
      wrote one before, so a run of 73 steps with a checkpoint every 50 would end at step 50.
      Not called after an exception: a diverged run keeps its last healthy checkpoint.
    - the same rule in manual optimisation (descend's step) as in automatic: Lightning's manual
      branch ignores `train_time_interval` and warns on every save.
    """

    def __init__(self, *args: Any, min_interval_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_interval_s = min_interval_s
        self._last_saved_at = time.monotonic()
        self._save_after_validation = False

    @property
    def event_every_n_steps(self) -> int:
        """Read by descend's step planner: a batch of steps ends at each of these steps."""
        return self._every_n_train_steps

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_saved_at = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # a signal's stop (stopping.py) is saved at its step, due or not
        signalled = bool(getattr(pl_module, "stop_signal", None))
        if self._should_skip_saving_checkpoint(trainer) or not (signalled or self._due(trainer)):
            return
        if stopping.validation_follows(trainer):
            # the epoch's validation runs next: a checkpoint taken after it resumes at the next
            # epoch; one taken before would resume with that validation skipped by Lightning
            self._save_after_validation = True
            return
        self._save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._save_after_validation and not self._should_skip_saving_checkpoint(trainer):
            self._save(trainer)
        self._save_after_validation = False
        super().on_train_epoch_end(trainer, pl_module)

    def _save(self, trainer: pl.Trainer) -> None:
        # the curve up to this step on disk first: a run killed after the checkpoint resumes
        # from it, and its TensorBoard keeps what was written before (the rest is purged)
        buffered = getattr(trainer.lightning_module, "metric_buffer", None)
        if buffered is not None:
            buffered.flush(trainer.loggers if trainer.is_global_zero else [])
        for logger in trainer.loggers:
            logger.save()
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        self._last_saved_at = self._last_time_checked = time.monotonic()

    def _due(self, trainer: pl.Trainer) -> bool:
        elapsed = time.monotonic() - self._last_saved_at
        if self._train_time_interval is not None:  # Lightning's own time-based trigger
            due = elapsed >= self._train_time_interval.total_seconds()
        else:
            every = self._every_n_train_steps
            if every < 1 or trainer.global_step % every:
                return False
            due = elapsed >= (self.min_interval_s or 0)
        return bool(trainer.strategy.broadcast(due))  # the ranks' clocks differ: rank 0 decides

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer) and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)
