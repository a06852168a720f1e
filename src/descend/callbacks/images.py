"""Log the task's pictures (W·M, A beside U Vᵀ, prediction against truth) to TensorBoard every N steps."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger


class ImageLogger(pl.Callback):
    """Calls `task.images()` at step 0 and every `every_n_steps` after, and once at the end of training."""

    def __init__(self, every_n_steps: int = 20) -> None:
        self.every_n_steps = every_n_steps

    @staticmethod
    def _writer(trainer: pl.Trainer) -> Any:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = self._writer(trainer) if trainer.is_global_zero else None
        if writer is None:
            return
        for tag, image in pl_module.images().items():
            writer.add_image(f"images/{tag}", image, trainer.global_step, dataformats="HWC")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # before the update, as the seed notebook prints W·M at t % 20 == 0
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_steps > 0:
            self._log(trainer, pl_module)
