"""descend's callbacks for a population: each does, member by member, what its single-run form
does for a run, at the same steps (the step planner reads the same `event_every_n_steps`)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch

from descend import lightning_internals, stepping
from descend.callbacks import Checkpoint, ImageLogger


class PopulationCheckpoint(Checkpoint):
    """Checkpoint's rule (multiples of every_n_train_steps, at most one per min_interval_s, always
    at the end), writing each running member's checkpoints/last.ckpt as its own run would."""

    def _save(self, trainer: pl.Trainer) -> None:
        population = trainer.lightning_module
        base = lightning_internals.dump_checkpoint(trainer)
        stepping.read_back([population.members[index].task.metric_buffer for index in population.active])
        for index in population.active:
            member = population.members[index]
            # the curve up to this step on disk first (see Checkpoint._save)
            member.task.metric_buffer.flush(member.loggers)
            for logger in member.loggers:
                logger.save()
            member.save_checkpoint(base, population.updater.load_into(index), trainer.global_step)
        self._last_saved_at = self._last_time_checked = time.monotonic()
        self._last_global_step_saved = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save(trainer)


class PopulationGuard(pl.Callback):
    """Each member's own DivergenceGuard on its column of the losses: a member that diverges stops
    there (its parameters are held, its error is its own) and the others train on. When none is
    left, training ends."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings  # the members' guards carry them; kept for the config's sake

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # every member's losses of the group read back at once (one transfer from a GPU, where a
        # read per member would wait for the device each time), then each member's guard reads its column
        losses, first_step = outputs["losses"].detach().cpu(), outputs["first_step"]
        for index in pl_module.active:
            member = pl_module.members[index]
            guard = member.guard()
            if guard is None or guard.every_n_steps < 1:
                continue
            found = guard.find(losses[:, index], first_step)
            if found is None:
                continue
            step, loss, exploded = found
            task = member.task
            task.metric_buffer.flush(member.loggers, through_step=step - 1)
            task.log_to_loggers({"train/loss": torch.tensor(loss)}, step=step)
            last_of_batch = step == first_step + len(losses) - 1
            member.stop_diverged(guard.error(step, loss, exploded, task, [member.optimizer], check_parameters=last_of_batch))
            pl_module.stop(index)
        if not pl_module.active:
            trainer.should_stop = True


class PopulationImages(ImageLogger):
    """ImageLogger's schedule and time budget, drawing every running member's pictures into its
    own TensorBoard run."""

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from descend.callbacks.images import picture_loggers
        from descend.dashboard import tensorboard_loggers

        start = time.perf_counter()
        for index in pl_module.active:
            member = pl_module.members[index]
            for logger in tensorboard_loggers(member.loggers):
                for tag, image in member.task.images().items():
                    logger.experiment.add_image(f"images/{tag}", image, trainer.global_step, dataformats="HWC")
            others = picture_loggers(member.loggers)
            if others:
                images = member.task.images()
                for logger in others:
                    logger.log_images(images, trainer.global_step)
        self._spent += time.perf_counter() - start


# descend's callbacks (conf/callbacks/default.yaml) and the form each takes in a population.
# Any other callback keeps a job out of populations (grouping.py).
POPULATION_FORMS = {
    "descend.callbacks.Checkpoint": "descend.population.events.PopulationCheckpoint",
    "descend.callbacks.DivergenceGuard": "descend.population.events.PopulationGuard",
    "descend.callbacks.ImageLogger": "descend.population.events.PopulationImages",
    "descend.callbacks.StepProgressBar": "descend.callbacks.StepProgressBar",
    "descend.callbacks.Sharpness": "descend.callbacks.Sharpness",  # off (every_n_steps=0): on, a job runs alone (grouping.py)
}
