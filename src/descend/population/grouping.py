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


def member_setting(key: str, *configs: DictConfig) -> bool:
    """Whether config `key` (dotted) holds, in these configs, a number a member may set for itself:
    the seed, an optimiser's MEMBER_OPTIMIZER_KEYS, a scheduler's number. population_key leaves
    such keys out and why_alone does not read them, so configs that differ only there share both."""
    section, _, name = key.partition(".")
    if key == "seed" or (section == "optimizer" and name in MEMBER_OPTIMIZER_KEYS):
        return True
    if section != "scheduler" or not name or "." in name:
        return False
    values = [(OmegaConf.to_container(cfg.scheduler) if isinstance(cfg.get("scheduler"), DictConfig) else {}).get(name) for cfg in configs]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plan(configs: list[DictConfig], alike: list[int | None] | None = None) -> list[tuple[list[int], str | None]]:
    """The jobs (indices into `configs`) in populations, in order of their first job, each with
    None, or alone with the reason. A population of one job runs alone too (reason None).
    `alike[i]`, where given, is an earlier job that configs[i] differs from only in member
    settings (member_setting): configs[i] shares its verdict and key without their walks."""
    groups: dict[str, list[int]] = {}
    alone: list[tuple[list[int], str | None]] = []
    verdicts: dict[int, tuple[str | None, str | None]] = {}  # a job's reason, or its population's key
    for index, cfg in enumerate(configs):
        earlier = alike[index] if alike is not None else None
        if earlier is not None and earlier in verdicts:
            reason, key = verdicts[earlier]
        else:
            reason = why_alone(cfg)
            key = population_key(cfg) if reason is None else None
        verdicts[index] = reason, key
        if reason is not None:
            alone.append(([index], reason))
        else:
            groups.setdefault(key, []).append(index)
    return sorted([(jobs, None) for jobs in groups.values()] + alone, key=lambda item: item[0][0])
