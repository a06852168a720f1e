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
    """Raises `Diverged` at the first step whose loss is NaN or infinite, or whose size passed
    `max_growth` times max(|first loss|, 1) (an explosion that has not overflowed yet).

    Lightning's EarlyStopping(check_finite=True) only looks at epoch ends; a diverging
    gradient descent overflows within a few steps, so this checks every N steps.
    """

    def __init__(self, every_n_steps: int = 1, max_growth: float | None = 1e6) -> None:
        self.every_n_steps = every_n_steps
        self.max_growth = max_growth
        self.first_loss: float | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps < 1 or step % self.every_n_steps:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        loss_value = float(loss) if loss is not None else math.nan
        if self.first_loss is None:
            self.first_loss = abs(loss_value)
        # scaled by at least 1: a loss that starts at (or can pass through) zero is no explosion
        exploded = self.max_growth is not None and abs(loss_value) > self.max_growth * max(self.first_loss, 1.0)
        # the loss is computed from the parameters: a non-finite parameter shows up here.
        # Data-parallel ranks decide together, or one would stop while the others wait for it.
        if not trainer.strategy.reduce_boolean_decision(exploded or not math.isfinite(loss_value), all=False):
            return
        bad_params = [name for name, p in pl_module.named_parameters() if not torch.isfinite(p).all()]
        if trainer.is_global_zero:  # the last point of the curve shows the blow-up
            for logger in trainer.loggers:
                logger.log_metrics({"train/loss": loss_value}, step=step)
        lrs = sorted({group["lr"] for opt in trainer.optimizers for group in opt.param_groups})
        lr = ",".join(f"{v:g}" for v in lrs)
        what = f"loss = {loss_value:g}" + (f", over {self.max_growth:g}x its starting size" if exploded and math.isfinite(loss_value) else "")
        what += f", non-finite parameters: {', '.join(bad_params)}" if bad_params else ""
        raise Diverged(
            f"training diverged at step {step} ({what}); the learning rate optimizer.lr={lr} is likely too large "
            f"for this task: lower it (e.g. optimizer.lr={lrs[0] / 4:g}) or add a scheduler"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"first_loss": self.first_loss}  # a resumed run keeps measuring growth from the same start

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.first_loss = state_dict.get("first_loss")
