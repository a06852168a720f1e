"""Checkpoints every N steps and, always, at the end of training."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, plus last.ckpt at the final step.

    Lightning writes last.ckpt at the end of training only if it never wrote one before, so a
    run of 73 steps with a checkpoint every 50 would end with last.ckpt from step 50. Not
    called after an exception: a diverged run keeps its last healthy checkpoint.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer) and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)
