"""A progress bar over the whole run, counting optimiser steps, not Lightning batches."""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf


class StepProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, one for the run: the optimiser step against the run's last step
    (`trainer.max_steps`, or max_epochs × steps per epoch), with tqdm's rate and time left.

    Lightning's own bar starts again at every epoch and counts batches; a descend batch holds up to
    `steps_per_batch` steps and a full-batch task's "epoch" is an arbitrary 100 of them, so that
    read `Epoch 2659: 100/100`. A resumed run's bar starts at its checkpoint's step, and its rate
    counts the steps of this session only (tqdm's `initial`)."""

    def __init__(self, refresh_rate: int = 20, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)

    def run_total(self, trainer: pl.Trainer) -> int | None:
        """The step the run ends at, where a limit says so (None: unbounded, e.g. max_time only)."""
        totals = []
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            totals.append(trainer.max_steps)
        per_epoch = getattr(trainer.train_dataloader, "steps", None)  # descend's loaders: steps per epoch
        if trainer.max_epochs is not None and trainer.max_epochs > 0 and per_epoch:
            totals.append(trainer.max_epochs * per_epoch)
        return min(totals) if totals else None

    def on_train_start(self, trainer: pl.Trainer, *_: Any) -> None:
        # the bar starts with the first batch: what the task prints when training starts (theory's
        # line) then goes to a line of its own, not onto the bar's
        self._train_progress_bar = None

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        pass  # one bar for the whole run: nothing restarts at an epoch

    def on_train_batch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        if self._train_progress_bar is not None:
            return
        # Lightning's init_train_tqdm, with the total and the starting step known when it is first drawn;
        # `initial`: a resumed run's rate counts this session's steps
        self.train_progress_bar = Tqdm(desc="Training", total=convert_inf(self.run_total(trainer)), initial=trainer.global_step,
                                       position=2 * self.process_position, disable=self.is_disabled, leave=True,
                                       dynamic_ncols=True, file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT)

    def init_validation_tqdm(self) -> Tqdm:
        """No bar for validation inside a fit: it lasts a blink, and a small table whose epoch is
        one step would draw one (with its cursor-up escapes) at every step. Its metrics reach the
        training bar's postfix; a validation outside a fit (`trainer.validate`) keeps its bar."""
        if self.trainer.state.fn == "fit":
            return Tqdm(disable=True)
        return super().init_validation_tqdm()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning's, but the training bar's new postfix waits for its next refresh (every
        # refresh_rate steps): a redraw at each validation is a redraw at each step for a small table
        self.val_progress_bar.close()
        self.reset_dataloader_idx_tracker()
        if self._train_progress_bar is not None and trainer.state.fn == "fit":
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Lightning's, plus the loss of the latest step (descend's step does not self.log it) and,
        where the run is counted in epochs, the epoch."""
        metrics = super().get_metrics(trainer, pl_module)
        loss = getattr(getattr(pl_module, "step_state", None), "loss", None)
        if loss is not None:
            metrics["train/loss"] = f"{float(loss):.3g}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            metrics["epoch"] = trainer.current_epoch
        return metrics

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self._train_progress_bar
        step = trainer.global_step
        if bar is not None and not bar.disable and (step - bar.n >= self.refresh_rate or step == bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar = self._train_progress_bar
        if bar is not None and not bar.disable:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)  # drawn at the next update or close

    def on_train_end(self, *_: Any) -> None:
        if self._train_progress_bar is not None:
            self._train_progress_bar.close()
