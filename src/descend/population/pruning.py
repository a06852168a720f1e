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

Here: the settings and the rules (no Lightning: the launcher's config imports this at Hydra's plugin
scan). The callback that applies them is events.PopulationPruner.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

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
