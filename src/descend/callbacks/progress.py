"""A progress bar that counts optimiser steps, not Lightning batches."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, counting the optimiser steps of each epoch: one descend batch holds
    several steps, so Lightning's batch count would run short of the steps."""

    def __init__(self, refresh_rate: int = 20, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._epoch_start = 0

    @property
    def total_train_batches(self) -> int | float:
        loader = self.trainer.train_dataloader
        steps_left = getattr(loader, "steps_left", None)
        left = steps_left(self.trainer.global_step) if steps_left else super().total_train_batches
        max_steps = self.trainer.max_steps
        return min(left, max_steps - self.trainer.global_step) if max_steps is not None and max_steps > 0 else left

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Lightning's, plus the loss of the latest step (descend's step does not self.log it)."""
        metrics = super().get_metrics(trainer, pl_module)
        loss = getattr(getattr(pl_module, "step_state", None), "loss", None)
        if loss is not None:
            metrics["train/loss"] = f"{float(loss):.3g}"
        return metrics

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._epoch_start = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        done = trainer.global_step - self._epoch_start
        if bar is not None and not bar.disable and (done - bar.n >= self.refresh_rate or done == bar.total):
            bar.n = done
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))
