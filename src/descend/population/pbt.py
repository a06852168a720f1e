"""`hydra.launcher.pbt`: population-based training inside a population (Jaderberg et al., 2017,
"Population Based Training of Neural Networks", arXiv:1711.09846; Ray Tune's PopulationBasedTraining).

Every `interval` steps the running members are ranked by `metric` (as the pruner ranks them,
pruning.ranked: lower is better, ties by job number, non-finite last). Each member in the bottom
`fraction` copies the parameters and the optimiser's state of a member drawn from the top
`fraction` ("exploit": a copy of rows of the stacked parameters and of VectorisedOptimizer's
state), takes that member's searched hyper-parameters and multiplies each by a factor drawn from
`factors` ("explore"), clipped to `bounds`. The draws come from one torch.Generator seeded with
`seed` (the sweep's seed by default), so a sweep's copies are the same every time it runs.

The searched hyper-parameters (`keys`) are the swept `optimizer.*` keys that the vectorised
optimiser holds per member (optimizers.VECTORISED: lr, momentum, weight_decay, …); a member's new
values go into its own torch optimiser's param_groups, so its checkpoint holds them and its
`lr-*` curve shows them. Its metrics.json's `lineage` lists each copy:
{step, copied: job number, folder, metric, value, from_value, values: {key: new value}}.

Here: the settings and their checks (no Lightning: the launcher's config imports this at Hydra's
plugin scan). The callback is events.PopulationPBT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from descend.errors import ConfigError

# the optimiser keys a member may hold its own value of, as the configs name them (betas is a pair)
PERTURBABLE = ("lr", "momentum", "dampening", "weight_decay", "eps", "alpha")


@dataclass
class PBTConf:
    """hydra.launcher.pbt.*: see the module's docstring. interval null: no PBT."""

    interval: Any = None  # steps between two exploit/explore rounds
    fraction: float = 0.25  # the bottom share copies from the top share, in (0, 0.5]
    metric: str = "train/loss"
    factors: list = field(default_factory=lambda: [0.8, 1.25])
    bounds: Any = None  # {key: [lo, hi]} (Any: a struct dict would refuse new keys)
    keys: Any = None  # the hyper-parameters perturbed: null = every swept optimizer key in PERTURBABLE
    seed: Any = None  # the generator's seed: null = the sweep's `seed`


def swept_optimizer_keys(config: Any) -> list[str]:
    """The `optimizer.*` keys a sweep varies: its sweep overrides (a,b,c; range; choice) and
    hydra.sweeper.params (Hydra's basic sweeper and descend's Optuna sweeper)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = []
    overrides = OverridesParser.create().parse_overrides([str(o) for o in config.hydra.overrides.task])
    keys += [o.key_or_group for o in overrides if o.is_sweep_override()]
    keys += [str(k) for k in (config.hydra.sweeper.get("params") or {})]
    return sorted({k.split(".", 1)[1] for k in keys if k.startswith("optimizer.")})


def checked(settings: Any, config: Any, pruner: Any) -> PBTConf | None:
    """The PBT settings, checked against the sweep `config` (ConfigError naming the key and the
    fix), with `keys` and `seed` filled in; None when off."""
    conf = PBTConf(**dict(settings or {}))
    if conf.interval in (None, "none", "null"):
        return None
    if pruner is not None:
        raise ConfigError("hydra.launcher.pbt and hydra.launcher.pruner are both set: use one (pbt.interval=null or pruner.rule=null)")
    if isinstance(conf.interval, bool) or not isinstance(conf.interval, int) or conf.interval < 1:
        raise ConfigError(f"hydra.launcher.pbt.interval={conf.interval} must be an integer ≥ 1 (steps between copies)")
    if isinstance(conf.fraction, bool) or not isinstance(conf.fraction, (int, float)) or not 0 < conf.fraction <= 0.5:
        raise ConfigError(f"hydra.launcher.pbt.fraction={conf.fraction} must be in (0, 0.5]: the bottom share copies the top share")
    if conf.metric != "train/loss" and not str(conf.metric).startswith("val/"):
        raise ConfigError(f"hydra.launcher.pbt.metric={conf.metric}: use train/loss or a val/ metric of the task")
    factors = list(conf.factors or [])
    if not factors or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in factors):
        raise ConfigError(f"hydra.launcher.pbt.factors={factors} must be a list of positive numbers, e.g. [0.8,1.25]")
    conf.factors = [float(f) for f in factors]
    swept = [k for k in swept_optimizer_keys(config) if k in PERTURBABLE]
    given = [conf.keys] if isinstance(conf.keys, str) and conf.keys != "null" else conf.keys
    keys = swept if given in (None, "null") else [str(k) for k in given]
    for key in keys:
        if key not in swept:
            example = "0.01,0.1" if key == "lr" else "0.5,0.9"
            raise ConfigError(f"hydra.launcher.pbt.keys: optimizer.{key} is not swept by this sweep (swept: {', '.join(swept) or 'none'}); "
                              f"sweep it, e.g. optimizer.{key}={example}, or drop it")
    if not keys:
        raise ConfigError("hydra.launcher.pbt: the sweep varies no optimizer key PBT can perturb "
                          f"({', '.join(PERTURBABLE)}); sweep one, e.g. optimizer.lr=0.01,0.02,0.05,0.1")
    conf.keys = keys
    bounds = {}
    for key, given_pair in dict(conf.bounds or {}).items():
        if key not in keys:
            raise ConfigError(f"hydra.launcher.pbt.bounds.{key}: {key} is not perturbed (perturbed: {', '.join(keys)})")
        pair = list(given_pair) if isinstance(given_pair, (list, tuple)) else []
        if len(pair) != 2 or not all(isinstance(v, (int, float)) for v in pair) or pair[0] > pair[1]:
            raise ConfigError(f"hydra.launcher.pbt.bounds.{key}={given_pair} must be [lo, hi] with lo ≤ hi")
        bounds[key] = (float(pair[0]), float(pair[1]))
    conf.bounds = bounds
    if conf.seed in (None, "null"):
        conf.seed = int(config.get("seed") or 0)
    return conf


def pairs(order: list[int], fraction: float, draws: list[int]) -> list[tuple[int, int]]:
    """(copier, source) positions: the bottom ⌊n·fraction⌋ (at least one, of n ≥ 2) of `order`
    (positions best first), each with the top-share member `draws[i]` (an index into the top)."""
    count = max(1, int(len(order) * fraction)) if len(order) >= 2 else 0
    top, bottom = order[:count], order[len(order) - count:]
    return [(copier, top[draw % count]) for copier, draw in zip(bottom, draws)]


def perturbed(value: float, factor: float, bounds: tuple[float, float] | None) -> float:
    """value × factor, within bounds."""
    new = value * factor
    return min(max(new, bounds[0]), bounds[1]) if bounds else new


def pbt_summary(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    """summary.md's section on PBT's copies ('' unless some job has a `lineage`): per job, in the
    summary's order (`rows`, multirun.job_rows), how many times it copied, from which jobs at which
    steps, and the searched values it ends with (those of its last copy, or its own where it never
    copied; a scheduler's changes to the lr are not counted). The lineages are the rows' (each job's
    metrics.json); a job's own values are read from its .hydra/config.yaml in `sweep_dir`."""
    from descend.configtext import read_yaml

    lineages = {row["job"]: row.get("lineage") or [] for row in rows}
    if not any(lineages.values()):
        return ""
    keys = list(dict.fromkeys(key for entries in lineages.values() for entry in entries for key in entry["values"]))
    lines = ["", "## Population-based training", "",
             f"{sum(map(len, lineages.values()))} copies (hydra.launcher.pbt; each job's `lineage` in its metrics.json): "
             "each job's copies and the values it ends with.", "",
             "| job | copies | copied from (at step) | " + " | ".join(f"{key} at the end" for key in keys) + " |",
             "|" + "---|" * (3 + len(keys))]
    for job, entries in lineages.items():
        if entries:
            final = entries[-1]["values"]
        else:  # never copied: its own values, as its job's config says
            saved = sweep_dir / job / ".hydra" / "config.yaml"
            final = ((read_yaml(saved) or {}) if saved.is_file() else {}).get("optimizer") or {}
        sources = ", ".join(f"{entry['folder']} ({entry['step']})" for entry in entries) or "—"
        values = [f"{final[key]:.4g}" if isinstance(final.get(key), (int, float)) else "—" for key in keys]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in [job, str(len(entries)), sources, *values]) + " |")
    return "\n".join(lines) + "\n"
