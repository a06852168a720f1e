"""`hydra.launcher.pruner`: members that stop early, inside the population.

Two rules, after Optuna's pruners and Ray Tune's ASHA (a population is synchronous: every member
reaches a rung at the same step, so asynchronous halving and successive halving agree):

- `halving` (successive halving): at the rungs r, r·η, r·η², … (`min_steps`, `eta`) keep the best
  ⌊n/η⌋ (at least one) of the n members still training, ranked by `metric`; ties go to the lower
  job number, a non-finite value ranks last.
- `median`: every `every_n_steps` steps from `min_steps` on, stop each member whose metric is worse
  than the median of the other members still training (Optuna's MedianPruner, among the members).

The metric is `train/loss` (the loss of the last step taken before the rung: step r−1's, on its
batch, the value every member has there) or a `val/*` metric of a task that validates (its last
validation at or before the rung). A pruned member stops at the rung as a signal stops a run
(stopping.py): its curves end there, its checkpoint is at that step, metrics.json says
`status: pruned` with the rule's numbers, and `final/*`, `ref/*` and the solution are that step's,
so `resume=<its folder>` continues it alone, exactly. The population then computes only the members
still training (Population.release shrinks the stacked parameters and the optimiser's state).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl

from descend import stepping, stopping
from descend.errors import ConfigError

RULES = ("halving", "median")


@dataclass
class PrunerConf:
    """hydra.launcher.pruner.*: see the module's docstring. rule null: every member trains to the end."""

    rule: Any = None  # halving | median
    metric: str = "train/loss"
    min_steps: int = 100  # halving: the first rung r; median: no pruning before it
    eta: int = 2  # halving: the rungs' ratio, and 1/eta of the members kept at each
    every_n_steps: int = 100  # median: how often it is applied


def checked(settings: Any) -> PrunerConf | None:
    """The pruner's settings, checked (ConfigError naming the key and the fix), or None when off."""
    conf = PrunerConf(**dict(settings or {}))
    if conf.rule in (None, "none", "null"):
        return None
    if conf.rule not in RULES:
        raise ConfigError(f"hydra.launcher.pruner.rule={conf.rule} is not a pruner: use halving, median or null")
    for key, low in (("min_steps", 1), ("eta", 2), ("every_n_steps", 1)):
        value = getattr(conf, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"hydra.launcher.pruner.{key}={value} must be an integer ≥ {low}")
    if conf.metric != "train/loss" and not str(conf.metric).startswith("val/"):
        raise ConfigError(f"hydra.launcher.pruner.metric={conf.metric}: use train/loss or a val/ metric of the task")
    return conf


def halving_rung(step: int, first: int, eta: int) -> bool:
    """Whether `step` is one of first, first·eta, first·eta², …"""
    if step < first or step % first:
        return False
    ratio = step // first
    while ratio % eta == 0:
        ratio //= eta
    return ratio == 1


def ranked(values: list[float], numbers: list[int]) -> list[int]:
    """Positions of `values` best first (lowest; NaN and inf last), ties by job number."""
    return sorted(range(len(values)), key=lambda i: (values[i] if math.isfinite(values[i]) else math.inf, numbers[i]))


def halving_pruned(values: list[float], numbers: list[int], eta: int) -> list[int]:
    """Positions successive halving stops: all but the best ⌊n/eta⌋ (at least one)."""
    return ranked(values, numbers)[max(1, len(values) // eta):]


def median_pruned(values: list[float], numbers: list[int]) -> list[int]:
    """Positions the median rule stops: those worse than the median of the others (none alone)."""
    if len(values) < 2:
        return []
    finite = [v if math.isfinite(v) else math.inf for v in values]
    return [i for i, v in enumerate(finite) if v > statistics.median(finite[:i] + finite[i + 1:])]


class PopulationPruner(pl.Callback):
    """The rule applied at its steps to the running members (module doc)."""

    def __init__(self, conf: PrunerConf) -> None:
        self.conf = conf
        self._latest: dict[int, float] = {}  # member number → its metric's latest value
        self._after_validation = False

    @property
    def event_every_n_steps(self) -> int:
        """Read by descend's step planner: a group of steps ends at every multiple (the rungs are some)."""
        return self.conf.min_steps if self.conf.rule == "halving" else self.conf.every_n_steps

    def due(self, trainer: pl.Trainer) -> bool:
        step, conf = trainer.global_step, self.conf
        if step <= 0 or (trainer.max_steps is not None and 0 <= trainer.max_steps <= step):
            return False
        if conf.rule == "halving":
            return halving_rung(step, conf.min_steps, conf.eta)
        return step >= conf.min_steps and step % conf.every_n_steps == 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.conf.metric == "train/loss" and len(outputs["losses"]):
            last = outputs["losses"][-1].tolist()  # the group's last step, one value per member
            for index in pl_module.active:
                self._latest[pl_module.members[index].number] = last[index]
        if pl_module.stop_signal or not self.due(trainer):
            return
        if stopping.validation_follows(trainer):  # its validation first, as a checkpoint waits for it
            self._after_validation = True
            return
        self.prune(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.conf.metric.startswith("val/"):
            for index in pl_module.active:
                _, logged = pl_module.members[index].task.step_state.last_logged
                if self.conf.metric not in logged:  # a name the task does not log: say which it does
                    names = ", ".join(sorted(k for k in logged if k.startswith("val/") and "log10_" not in k))
                    raise ConfigError(f"hydra.launcher.pruner.metric={self.conf.metric} is not logged by this task; it logs {names}")
                self._latest[pl_module.members[index].number] = float(logged[self.conf.metric])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self._after_validation and not pl_module.stop_signal:
            self.prune(trainer, pl_module)
        self._after_validation = False

    def prune(self, trainer: pl.Trainer, population: Any) -> None:
        candidates = population.active
        members = [population.members[i] for i in candidates]
        values = [self._latest.get(m.number, math.nan) for m in members]
        numbers = [m.number for m in members]
        if self.conf.rule == "halving":
            stopped = halving_pruned(values, numbers, self.conf.eta)
        else:
            stopped = median_pruned(values, numbers)
        order = ranked(values, numbers)
        for position in stopped:
            details = {"rule": self.conf.rule, "step": trainer.global_step, "metric": self.conf.metric,
                       "value": values[position] if math.isfinite(values[position]) else None,
                       "rank": order.index(position) + 1, "of": len(members)}
            end_member(trainer, population, candidates[position], details)
        if not population.active:
            trainer.should_stop = True


def end_member(trainer: pl.Trainer, population: Any, index: int, details: dict[str, Any]) -> None:
    """Member `index` stops here, pruned: its curves up to this step and their last point, its
    checkpoint at this step (where the sweep checkpoints), its record; held until the batch ends."""
    from descend.population.events import PopulationCheckpoint

    member = population.members[index]
    task = member.task
    stepping.read_back([task.metric_buffer])
    task.metric_buffer.flush(member.loggers)
    stepping.log_last_step(task, member.optimizer)
    if any(isinstance(c, PopulationCheckpoint) for c in trainer.callbacks):
        for logger in member.loggers:
            logger.save()
        base = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        member.save_checkpoint(base, population.updater.load_into(index), trainer.global_step)
    member.stop_pruned(trainer.global_step, details)
    population.stop(index)
