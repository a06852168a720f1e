"""`hydra/launcher=population`: the jobs of a sweep that differ only in per-member numbers (the
optimiser's and scheduler's hyper-parameters, the seed) train together as one vectorised run
(descend.population); every job still gets its own folder, exactly as the basic launcher writes it.

Laid out as Hydra's own launcher plugins are: a config registered under hydra/launcher and a
Launcher found in the hydra_plugins namespace package. The sweepers hand it batches of jobs
(Optuna: hydra.sweeper.n_jobs at a time), and each batch trains as populations.
"""


import logging
import os
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from descend.population.pbt import PBTConf
from descend.population.pruning import PrunerConf

log = logging.getLogger(__name__)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.descend_population_launcher.population_launcher.PopulationLauncher"
    # the most members trained together; larger sweeps train as several populations in turn
    max_members: int = 1024
    # members stopped early: successive halving or the median rule (descend.population.pruning)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # population-based training: the bottom members copy the top ones and perturb (descend.population.pbt)
    pbt: PBTConf = field(default_factory=PBTConf)


ConfigStore.instance().store(group="hydra/launcher", name="population", node=PopulationLauncherConf, provider="descend")


class PopulationLauncher(Launcher):
    def __init__(self, max_members: int = 1024, pruner: Any = None, pbt: Any = None) -> None:
        self.max_members = max_members
        self.pruner_settings = OmegaConf.to_container(pruner) if isinstance(pruner, DictConfig) else pruner
        self.pbt_settings = OmegaConf.to_container(pbt) if isinstance(pbt, DictConfig) else pbt
        self.pruner: Any = None  # pruning.PrunerConf or pbt.PBTConf, checked in setup
        self.resume_from: dict[int, str | None] = {}  # a resumed sweep's jobs: their checkpoints (launch)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from descend.errors import ConfigError
        from descend.population import pbt, pruning

        try:
            self.pruner = pruning.checked(self.pruner_settings)
            self.pruner = pbt.checked(self.pbt_settings, config, self.pruner) or self.pruner
            check_metric_is_logged(self.pruner, config)
        except ConfigError as error:  # before any job's folder exists; inside Hydra's run, as the Optuna sweeper refuses
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.hydra_config = HydraConfig.instance().cfg
        remember_sweep_configs(hydra_context.config_loader)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from descend.build import checkpoint_step
        from descend.resume_sweep import job_folder, resuming, sweep_checkpoint

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = []
        for offset, overrides in enumerate(job_overrides):
            number = initial_job_idx + offset
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = number
            configs.append(config)
        returns: list[JobReturn | None] = [None] * len(configs)
        task_cfgs = [job_config(c) for c in configs]
        # a resumed sweep's stopped jobs continue from their own checkpoints: those at one step train
        # together, apart from the jobs that start now (a population's members are at one step)
        self.resume_from = {i: sweep_checkpoint(c.hydra, job_folder(c)) for i, c in enumerate(configs) if resuming(c.hydra)}
        by_step: dict[int | None, list[int]] = {}
        for index in range(len(configs)):
            checkpoint = self.resume_from.get(index)
            by_step.setdefault(checkpoint_step(checkpoint) if checkpoint else None, []).append(index)
        for _, indices in sorted(by_step.items(), key=lambda item: -1 if item[0] is None else item[0]):
            self.launch_planned(indices, configs, task_cfgs, returns)
        return returns  # type: ignore[return-value]

    def launch_planned(self, indices: list[int], configs: list[DictConfig], task_cfgs: list[DictConfig],
                       returns: list[JobReturn | None]) -> None:
        """The jobs `indices` (of configs) as plan() groups them: populations, or alone with the reason;
        their JobReturns go into `returns`."""
        from descend.population.grouping import plan

        for planned, reason in plan([task_cfgs[i] for i in indices]):
            jobs = [indices[i] for i in planned]
            for start in range(0, len(jobs), self.max_members):
                chunk = jobs[start : start + self.max_members]
                if len(chunk) == 1:
                    if reason:
                        print(f"population: job {configs[chunk[0]].hydra.job.num} runs alone: {reason}")
                    returns[chunk[0]] = self.run_alone(configs[chunk[0]])
                else:
                    for index, ret in zip(chunk, self.run_population([configs[i] for i in chunk], [task_cfgs[i] for i in chunk],
                                                                     [self.resume_from.get(i) for i in chunk])):
                        returns[index] = ret

    def run_alone(self, config: DictConfig) -> JobReturn:
        """As Hydra's basic launcher runs a job."""
        assert self.hydra_context is not None and self.task_function is not None
        ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def run_population(self, configs: list[DictConfig], task_cfgs: list[DictConfig], resume_from: list[str | None]) -> list[JobReturn]:
        from descend.cli import quiet_lightning
        from descend.stopping import exit_code
        from descend.population.members import by_data, train_population

        quiet_lightning()
        jobs = [self.start_job(config, task_cfg, first=i == 0) for i, (config, task_cfg) in enumerate(zip(configs, task_cfgs))]
        members = [member for _, member in jobs]
        for member, checkpoint in zip(members, resume_from):
            member.resume_from = Path(checkpoint) if checkpoint else None
            member.build()
        built = [m for m in members if m.running]
        for member in members:
            if not member.running:  # a bad config: this job's one-line error, the others train
                member.return_value = member.finish(None, 0.0)
        stopped = None
        for population in by_data(built):
            numbers = [m.number for m in population]
            print(f"population: jobs {describe(numbers)} train together ({len(population)} members)")
            stopped = train_population(population, self.pruner)
            if stopped:
                break
        returns = [self.end_job(config, ret, member) for config, (ret, member) in zip(configs, jobs)]
        HydraConfig.instance().cfg = self.hydra_config  # as run_job leaves it
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        if stopped:
            sys.exit(exit_code(stopped))  # 143 SIGTERM, 130 SIGINT: the sweep ends as a stopped single run does
        return returns

    def start_job(self, config: DictConfig, task_cfg: DictConfig, first: bool) -> tuple[JobReturn, Any]:
        """Hydra's run_job up to the task function: the job's folder, its .hydra/ files, the
        callbacks' on_job_start; then the job's member, with its config resolved in its folder.
        `task_cfg` is the job's config without Hydra's node (job_config)."""
        from descend.configtext import save_config
        from descend.hparams import chosen_keys
        from descend.population.members import Member

        assert self.hydra_context is not None and self.task_function is not None
        output_dir = os.path.abspath(os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = output_dir
        HydraConfig.instance().set_config(config)
        ret = JobReturn()
        ret.cfg = task_cfg
        ret.hydra_cfg = HydraConfig.instance().cfg  # its own copy: the next job's set_config replaces it
        ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
        ret.working_dir = os.getcwd()
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if config.hydra.output_subdir is not None:
            saved = Path(output_dir) / str(config.hydra.output_subdir)
            # the bytes Hydra's _save_config writes, the unchanged entries' text reused (configtext)
            save_config(task_cfg, "config.yaml", saved)
            save_config(ret.hydra_cfg, "hydra.yaml", saved)
            save_config(config.hydra.overrides.task, "overrides.yaml", saved)
        if first:  # the console as run_job sets it; each member's train.log is its own (members.log_to)
            configure_log(config.hydra.job_logging, config.hydra.verbose)
        self.hydra_context.callbacks.on_job_start(config=config, task_function=self.task_function)
        # after saving config.yaml, which keeps the interpolations as run_job writes it:
        # ${hydra:runtime.output_dir} is this job's folder only while its Hydra config is set
        OmegaConf.resolve(task_cfg)
        member = Member(task_cfg, Path(output_dir), task_name=config.hydra.runtime.choices.get("task", "?"), number=config.hydra.job.num,
                        chosen=chosen_keys(config.hydra))
        ret.task_name = JobRuntime.instance().get("name")
        return ret, member

    def end_job(self, config: DictConfig, ret: JobReturn, member: Any) -> JobReturn:
        assert self.hydra_context is not None
        ret.return_value = member.return_value
        ret.status = JobStatus.COMPLETED
        self.hydra_context.callbacks.on_job_end(config=config, job_return=ret)
        return ret


def remember_sweep_configs(loader: Any) -> None:
    """Composing a job's config costs more than a small job's training, and a sweep composes each
    twice: the sweeper checks the batch (validate_batch_is_legal), then the launcher composes it
    again. Here the loader keeps what it composed for the launcher's call, and composes a job
    that differs from an earlier one only in plain values (optimizer.lr=0.1 → 0.2) by applying
    them to that one's config, as Hydra applies them (derive_sweep_config)."""
    if getattr(loader, "_descend_remembers", False):
        return
    compose = loader.load_sweep_config
    kept: dict[tuple[int, tuple[str, ...]], DictConfig] = {}
    templates: dict[tuple[Any, ...], bytes] = {}  # pickled: unpickling is a deep copy 3x faster than copy.deepcopy

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        key = (id(master_config), tuple(sweep_overrides))
        if key in kept:  # the second call, the launcher's: that object, as nobody else holds it
            return kept.pop(key)
        parsed = OverridesParser.create().parse_overrides(sweep_overrides)
        signature = plain_signature(master_config, parsed)
        template = templates.get((id(master_config), signature)) if signature else None
        config = derive_sweep_config(template, parsed) if template is not None else compose(master_config, sweep_overrides)
        if signature and template is None:
            templates[(id(master_config), signature)] = pickle.dumps(config)
        kept[key] = config
        return config

    loader.load_sweep_config = load_sweep_config
    loader._descend_remembers = True


def plain_signature(master_config: DictConfig, overrides: list[Override]) -> tuple[Any, ...] | None:
    """What jobs must share for one's config to be derived from another's: the group choices and
    the keys set. None where an override is not a plain `key=value` of the job's config."""
    groups = set(master_config.hydra.runtime.choices)
    keys, choices = [], []
    for override in overrides:
        key = override.key_or_group
        if override.is_sweep_override() or override.package is not None or override.is_add() or override.is_delete() \
                or override.is_force_add() or key.startswith("hydra") or "/" in key:
            return None
        if key in groups:
            choices.append(override.input_line)
        else:
            keys.append(key)
    return tuple(sorted(choices)), tuple(keys)


def derive_sweep_config(template: bytes, parsed: list[Override]) -> DictConfig:
    """The pickled `template` config with `parsed` overrides (the same keys and group choices, other values)
    applied as Hydra's _load_configuration_impl applies them: the values, the job's task
    overrides and its override_dirname (the job folder's name). tests/test_population.py checks
    the result against Hydra's own composition."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

    config = pickle.loads(template)
    choices = set(config.hydra.runtime.choices)
    ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if o.key_or_group not in choices], config)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.overrides.task = [o.input_line for o in parsed]
        naming = config.hydra.job.config.override_dirname
        config.hydra.job.override_dirname = get_overrides_dirname(
            overrides=parsed, kv_sep=naming.kv_sep, item_sep=naming.item_sep, exclude_keys=naming.exclude_keys)
    return config


def job_config(config: DictConfig) -> DictConfig:
    """The job's config without Hydra's node: what the task function receives (run_job deep-copies
    the whole config and deletes the node; copying only the rest is the same config, for less)."""
    task_cfg = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
    OmegaConf.set_struct(task_cfg, OmegaConf.is_struct(config))
    return task_cfg


def describe(numbers: list[int]) -> str:
    """0-15, or 0, 2, 5."""
    if numbers == list(range(numbers[0], numbers[0] + len(numbers))) and len(numbers) > 2:
        return f"{numbers[0]}-{numbers[-1]}"
    return ", ".join(str(n) for n in numbers)


def check_metric_is_logged(rule: Any, config: DictConfig) -> None:
    """A val/ metric for the pruner or PBT needs a task that validates: refused here, before any job
    folder exists, where the sweep's task is one (a swept task=… is checked per population, later)."""
    if rule is None or not str(rule.metric).startswith("val/"):
        return
    if any(str(o).startswith("task=") and "," in str(o) for o in config.hydra.overrides.task):
        return
    import lightning.pytorch as pl
    from hydra.utils import get_class

    from descend.errors import ConfigError

    task = get_class(str(config.task._target_))
    if task.validation_step is pl.LightningModule.validation_step:
        key = "pbt" if hasattr(rule, "interval") else "pruner"
        raise ConfigError(f"hydra.launcher.{key}.metric={rule.metric}: task {config.hydra.runtime.choices.task} does not "
                          "validate; use train/loss")
