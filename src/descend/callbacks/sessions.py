"""A run's sessions: what each resume changed and from which step, and the training time of them all."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger(__name__)


def numbers(factory: Any) -> dict[str, float]:
    """The numeric arguments of an optimiser or scheduler factory (Hydra's `_partial_` functools.partial)."""
    keywords = getattr(factory, "keywords", None) or {}
    return {k: v for k, v in keywords.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Sessions(pl.Callback):
    """Kept in every checkpoint (Lightning saves a callback's state_dict): the overrides the run
    was saved under, its optimiser's and scheduler's numbers, the list of resumes and the seconds
    trained so far. On a resume it applies what the overrides changed to the restored optimiser
    and scheduler, so that a new `optimizer.lr` is the lr of every following step (the checkpoint's
    optimiser state would otherwise bring the old one back), and records the resume.

    `overrides`: the run's Hydra overrides (descend's own resume= and ckpt_path= left out);
    `task`: the run's task, for a Sessions outside a trainer (a population member's)."""

    def __init__(self, overrides: list[str] | None = None, task: Any = None) -> None:
        self.overrides = list(overrides or [])
        self.resumed: list[dict[str, Any]] = []
        self.saved: dict[str, Any] | None = None  # the state of the checkpoint this session resumed from
        self.seconds_before = 0.0  # training time of the earlier sessions
        self._started: float | None = None
        self._task: Any = task  # set by setup() when the trainer's; given by a population member (not the trainer's)

    def wall_time_s(self) -> float:
        """Seconds of training over every session of the run, this one up to now."""
        return self.seconds_before + (time.perf_counter() - self._started if self._started is not None else 0.0)

    def state_dict(self) -> dict[str, Any]:
        task = self._task
        return {"overrides": self.overrides, "resumed": self.resumed, "wall_time_s": self.wall_time_s(),
                "optimizer": numbers(getattr(task, "optimizer_factory", None)),
                "scheduler": numbers((getattr(task, "scheduler_config", None) or {}).get("factory"))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.saved = dict(state_dict)
        self.resumed = list(state_dict.get("resumed", []))
        self.seconds_before = float(state_dict.get("wall_time_s", 0.0))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._task = pl_module

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        changed = self.apply_changes(trainer, pl_module, trainer.global_step) if self.saved is not None else []
        self.start_session(trainer.global_step, changed)

    def start_session(self, step: int, changed: list[str] | tuple[str, ...] = ()) -> None:
        """This session's clock starts; a resumed one is recorded: its step and the overrides that
        differ from the checkpoint's (else `changed`, the numbers apply_changes set). A population
        member's, at its population's start (a population applies no changed numbers)."""
        self._started = time.perf_counter()
        if self.saved is None:
            return
        before = self.saved.get("overrides")
        overrides = [o for o in self.overrides if before is None or o not in before]
        self.resumed.append({"step": step, "overrides": overrides or list(changed)})

    def apply_changes(self, trainer: pl.Trainer, task: Any, step: int) -> list[str]:
        """Set the hyper-parameters that differ from the checkpoint's on the restored optimiser
        (every parameter group) and scheduler; returns them as `key=value`."""
        changes = []  # (config key, the checkpoint's value, the new value)
        saved = self.saved.get("optimizer", {})
        for key, value in numbers(getattr(task, "optimizer_factory", None)).items():
            if key in saved and saved[key] != value:
                for optimizer in trainer.optimizers:
                    for group in optimizer.param_groups:
                        if key in group:
                            group[key] = value
                for config in trainer.lr_scheduler_configs:  # a schedule continues from the new lr
                    if key == "lr" and hasattr(config.scheduler, "base_lrs"):
                        config.scheduler.base_lrs = [value] * len(config.scheduler.base_lrs)
                changes.append((f"optimizer.{key}", saved[key], value))
        saved = self.saved.get("scheduler", {})
        for key, value in numbers((getattr(task, "scheduler_config", None) or {}).get("factory")).items():
            if key in saved and saved[key] != value:
                for config in trainer.lr_scheduler_configs:
                    if hasattr(config.scheduler, key):
                        setattr(config.scheduler, key, value)
                changes.append((f"scheduler.{key}", saved[key], value))
        if changes:
            log.info(f"resumed at step {step} with " + ", ".join(f"{k}={new} (was {old})" for k, old, new in changes))
        return [f"{k}={new}" for k, _, new in changes]
