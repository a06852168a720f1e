"""Which jobs of a sweep can train together: jobs whose configs differ only in numbers that can
differ per member (the optimiser's and the scheduler's hyper-parameters, the seed) form one
population; a job that cannot be vectorised at all runs alone, as the basic launcher runs it."""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

# the optimiser keys a member may set for itself (optimizers.VECTORISED): all numbers
MEMBER_OPTIMIZER_KEYS = ("lr", "momentum", "dampening", "weight_decay", "betas", "eps", "alpha")
PRECISIONS = ("32-true", "32", "64-true", "64")
# torch optimiser switches the vectorised update rules do not follow (optimizers.py)
UNVECTORISED_SWITCHES = ("maximize", "fused", "capturable", "differentiable")


def why_alone(cfg: DictConfig) -> str | None:
    """None when the job can be a population's member, else why not (a phrase for the console)."""
    from hydra.utils import get_class

    from descend.population.events import POPULATION_FORMS
    from descend.population.optimizers import VECTORISED

    optimizer = cfg.get("optimizer") or {}
    try:
        optimizer_class = get_class(optimizer.get("_target_", ""))
    except Exception:
        return None  # an unknown optimiser: the job itself reports it, in one line
    if optimizer_class not in VECTORISED:
        return f"optimizer {optimizer_class.__name__} is not vectorised (SGD, Adam, AdamW and RMSprop are)"
    unsupported = [key for key in UNVECTORISED_SWITCHES if optimizer.get(key)]
    if unsupported:
        return f"optimizer.{unsupported[0]}=true is not vectorised"
    trainer = cfg.trainer
    if "ddp" in str(trainer.get("strategy")) or str(trainer.get("devices")) not in ("1", "auto") or trainer.get("num_nodes", 1) != 1:
        return "data-parallel training runs one job at a time"
    if str(trainer.get("precision")) not in PRECISIONS:
        return f"trainer.precision={trainer.get('precision')} is not vectorised (32-true and 64-true are)"
    if cfg.get("resume") or cfg.get("ckpt_path"):
        return "a resumed run continues alone"
    for name, node in (cfg.get("callbacks") or {}).items():
        if node and node.get("_target_") == "descend.callbacks.Sharpness" and node.get("every_n_steps"):
            return f"callbacks.{name} measures one run's Hessian: it runs alone"
        if node and node.get("_target_") not in POPULATION_FORMS:
            return f"callbacks.{name} has no population form"
    if (cfg.task.get("model") or {}).get("dropout"):
        return "dropout draws random numbers per member"
    return None


def population_key(cfg: DictConfig) -> str:
    """Equal for jobs that can train together: the config without the numbers a member may
    set for itself (unresolved, so that ${hydra:runtime.output_dir} is the same text in every job)."""
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=False)  # type: ignore[assignment]
    config.pop("seed", None)
    optimizer = config.get("optimizer") or {}
    for key in MEMBER_OPTIMIZER_KEYS:
        optimizer.pop(key, None)
    scheduler = config.get("scheduler") or {}
    for key in [k for k, v in scheduler.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]:
        scheduler.pop(key)
    return json.dumps(config, sort_keys=True, default=str)


def plan(configs: list[DictConfig]) -> list[tuple[list[int], str | None]]:
    """The jobs (indices into `configs`) in populations, in order of their first job, each with
    None, or alone with the reason. A population of one job runs alone too (reason None)."""
    groups: dict[str, list[int]] = {}
    alone: list[tuple[list[int], str | None]] = []
    for index, cfg in enumerate(configs):
        reason = why_alone(cfg)
        if reason is not None:
            alone.append(([index], reason))
        else:
            groups.setdefault(population_key(cfg), []).append(index)
    return sorted([(jobs, None) for jobs in groups.values()] + alone, key=lambda item: item[0][0])
