"""Stop a run as soon as its loss or parameters stop being finite."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch

from descend.errors import UserError


class Diverged(UserError):
    """Training diverged: the run ends with status `diverged`."""


class DivergenceGuard(pl.Callback):
    """Raises `Diverged` at the first step whose loss or parameters are NaN or infinite.

    Lightning's EarlyStopping(check_finite=True) only looks at epoch ends; a diverging
    gradient descent overflows within a few steps, so this checks every N steps.
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps < 1 or step % self.every_n_steps:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        loss_value = float(loss) if loss is not None else math.nan
        if math.isfinite(loss_value):
            return  # the loss is computed from the parameters: a non-finite one would show here
        bad_params = [name for name, p in pl_module.named_parameters() if not torch.isfinite(p).all()]
        lrs = sorted({group["lr"] for opt in trainer.optimizers for group in opt.param_groups})
        lr = ",".join(f"{v:g}" for v in lrs)
        what = f"loss = {loss_value:g}" + (f", non-finite parameters: {', '.join(bad_params)}" if bad_params else "")
        raise Diverged(
            f"training diverged at step {step} ({what}); the learning rate optimizer.lr={lr} is likely too large "
            f"for this task: lower it (e.g. optimizer.lr={lrs[0] / 4:g}) or add a scheduler"
        )
