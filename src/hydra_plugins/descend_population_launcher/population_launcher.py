"""`hydra/launcher=population`: the jobs of a sweep that differ only in per-member numbers (the
optimiser's and scheduler's hyper-parameters, the seed) train together as one vectorised run
(descend.population); every job still gets its own folder, exactly as the basic launcher writes it.

Laid out as Hydra's own launcher plugins are: a config registered under hydra/launcher and a
Launcher found in the hydra_plugins namespace package. The sweepers hand it batches of jobs
(Optuna: hydra.sweeper.n_jobs at a time), and each batch trains as populations.
"""


import contextlib
import copy
import functools
import gc
import logging
import os
import pickle
import re
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import Container, DictConfig, OmegaConf, ValueNode, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from descend.population.collection import kept_from_collection
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


# the entries of a job's Hydra node that differ between jobs derived from one template (besides
# what its overrides set): Hydra's job number and id, its name for the folder, its overrides, its folder
PER_JOB_HYDRA_KEYS = ("job.num", "job.id", "job.override_dirname", "overrides.task", "runtime.output_dir")

ConfigStore.instance().store(group="hydra/launcher", name="population", node=PopulationLauncherConf, provider="descend")


class PopulationLauncher(Launcher):
    def __init__(self, max_members: int = 1024, pruner: Any = None, pbt: Any = None) -> None:
        self.max_members = max_members
        self.pruner_settings = OmegaConf.to_container(pruner) if isinstance(pruner, DictConfig) else pruner
        self.pbt_settings = OmegaConf.to_container(pbt) if isinstance(pbt, DictConfig) else pbt
        self.pruner: Any = None  # pruning.PrunerConf or pbt.PBTConf, checked in setup
        self.texts: dict[tuple[Any, ...], tuple[Any, Any]] = {}  # a group's configtext.TextTemplates (save_configs)
        self.interpolations: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}  # a group's interpolations (resolve)
        self.sweep_dirs: dict[tuple[Any, ...], str] = {}  # a group's hydra.sweep.dir (sweep_dir)
        self.files: ThreadPoolExecutor | None = None  # where save_configs hands its writes while jobs start
        self.written: list[Future[None]] = []
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
        return self.launch_numbered(job_overrides, list(range(initial_job_idx, initial_job_idx + len(job_overrides))))

    def launch_numbered(self, job_overrides: Sequence[Sequence[str]], numbers: list[int]) -> Sequence[JobReturn]:
        """Hydra's launch for jobs whose numbers need not follow one another: a resumed sweep's
        unfinished jobs (resume_sweep.ResumingLauncher), which then train as one population, as
        they did before the stop, and not in stretches of consecutive numbers."""
        setup_globals()
        # an earlier batch's jobs (Optuna's) are over: the collector may take them (kept_from_collection);
        # the last batch's are left to the process's end, which frees them without scanning them
        gc.unfreeze()
        with interpolations_parsed_once():
            return self.launch_batch(job_overrides, numbers)

    def launch_batch(self, job_overrides: Sequence[Sequence[str]], numbers: list[int]) -> Sequence[JobReturn]:
        from descend.build import checkpoint_step
        from descend.resume_sweep import job_folder, resuming, sweep_checkpoint

        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        with kept_from_collection():
            configs = [self.job_config_of(overrides, number) for number, overrides in zip(numbers, job_overrides)]
            task_cfgs = [job_config(c) for c in configs]
        returns: list[JobReturn | None] = [None] * len(configs)
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

    def job_config_of(self, overrides: Sequence[str], number: int) -> DictConfig:
        """Job `number`'s config (remember_sweep_configs keeps the one the sweeper's check composed)."""
        assert self.config is not None and self.hydra_context is not None
        log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
        loader = self.hydra_context.config_loader
        config = getattr(loader, "claim_sweep_config", loader.load_sweep_config)(self.config, list(overrides))
        set_existing(config.hydra.job, id=number, num=number)
        return config

    def launch_planned(self, indices: list[int], configs: list[DictConfig], task_cfgs: list[DictConfig],
                       returns: list[JobReturn | None]) -> None:
        """The jobs `indices` (of configs) as plan() groups them: populations, or alone with the reason;
        their JobReturns go into `returns`."""
        from descend.population.grouping import plan

        for planned, reason in plan([task_cfgs[i] for i in indices], alike_jobs([configs[i] for i in indices], [task_cfgs[i] for i in indices])):
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
        with kept_from_collection():
            # the jobs' .hydra/ files are written by a thread of their own while the jobs start: creating
            # a file costs this machine's disk up to a millisecond, and the thread waits for it off the GIL
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="descend-job-files") as self.files:
                jobs = [self.start_job(config, task_cfg, first=i == 0) for i, (config, task_cfg) in enumerate(zip(configs, task_cfgs))]
            self.files, written = None, self.written[:]
            self.written.clear()
            for future in written:
                future.result()  # a file that could not be written fails the sweep, as run_job's would
            members = [member for _, member in jobs]
            made: dict[Any, Any] = {}  # members alike but for the optimiser's numbers copy one task (build.new_task)
            for member, checkpoint in zip(members, resume_from):
                member.resume_from = Path(checkpoint) if checkpoint else None
                member.build(made)
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
        from descend.hparams import chosen_keys
        from descend.population.members import Member

        assert self.hydra_context is not None and self.task_function is not None
        derived = derivation(config)
        _DERIVED.pop(id(config), None)  # this job's entry is read for the last time here
        hydra = config.hydra
        output_dir = os.path.abspath(os.path.join(self.sweep_dir(hydra, derived), str(hydra.sweep.subdir)))
        set_existing(hydra.runtime, output_dir=output_dir)
        use_hydra_config(config)
        ret = JobReturn()
        ret.cfg = task_cfg
        ret.hydra_cfg = config  # holds this job's `hydra` node, as run_job's copy of HydraConfig does
        ret.overrides = OmegaConf.to_container(hydra.overrides.task)
        ret.working_dir = os.getcwd()
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if hydra.output_subdir is not None:
            self.save_configs(config, task_cfg, Path(output_dir) / str(hydra.output_subdir), derived)
        if first:  # the console as run_job sets it; each member's train.log is its own (members.log_to)
            configure_log(hydra.job_logging, hydra.verbose)
        self.hydra_context.callbacks.on_job_start(config=config, task_function=self.task_function)
        # after saving config.yaml, which keeps the interpolations as run_job writes it:
        # ${hydra:runtime.output_dir} is this job's folder only while its Hydra config is set
        self.resolve(task_cfg, derived)
        member = Member(task_cfg, Path(output_dir), task_name=hydra.runtime.choices.get("task", "?"), number=hydra.job.num,
                        chosen=chosen_keys(hydra, ret.overrides), overrides=ret.overrides)
        ret.task_name = JobRuntime.instance().get("name")
        return ret, member

    def sweep_dir(self, hydra: DictConfig, derived: "Derived | None") -> str:
        """hydra.sweep.dir, resolved once for a group's jobs whose overrides leave Hydra's node as
        it is: its ${now:...} values are the sweep's (the resolver cache each job's config copies)."""
        if derived is None or any(key.startswith("hydra.") for key in derived.keys):
            return str(hydra.sweep.dir)
        if derived.group not in self.sweep_dirs:
            self.sweep_dirs[derived.group] = str(hydra.sweep.dir)
        return self.sweep_dirs[derived.group]

    def resolve(self, task_cfg: DictConfig, derived: "Derived | None") -> None:
        """OmegaConf.resolve(task_cfg). A job derived from the first of its group has its
        interpolations where that one's were, and where its overrides set values: only those
        are resolved (resolve_at), not every entry of the config walked again."""
        if derived is None:
            OmegaConf.resolve(task_cfg)
            return
        if derived.group not in self.interpolations:  # the group's first job, still unresolved
            self.interpolations[derived.group] = interpolation_paths(task_cfg)
        resolve_at(task_cfg, [*self.interpolations[derived.group], *(tuple(key.split(".")) for key in derived.keys)])

    def save_configs(self, config: DictConfig, task_cfg: DictConfig, folder: Path, derived: "Derived | None") -> None:
        """The job's .hydra/ files, the bytes Hydra's _save_config writes. A derived job's config.yaml
        and hydra.yaml are the texts of the first job of its group (configtext.TextTemplate) with the
        entries that differ rendered anew: the keys its overrides set, its number, name and folder."""
        from descend.configtext import TextTemplate, plain_value, to_yaml

        texts = None
        if derived is not None:
            if derived.group not in self.texts:
                self.texts[derived.group] = (TextTemplate(OmegaConf.to_container(task_cfg, enum_to_str=True)),
                                             TextTemplate({"hydra": OmegaConf.to_container(config.hydra, enum_to_str=True)}))
            task_text, hydra_text = self.texts[derived.group]
            try:
                texts = (task_text.text({tuple(key.split(".")): plain_value(task_cfg, key) for key in derived.keys}),
                         hydra_text.text({("hydra", *key.split(".")): plain_value(config.hydra, key) for key in PER_JOB_HYDRA_KEYS}))
            except (OmegaConfBaseException, AttributeError, KeyError):  # a key OmegaConf cannot select as written
                texts = None                                                # (a[0]): the whole text, below
        files = {name: text if text is not None else to_yaml(node, keys=keys)
                 for name, text, node, keys in (("config.yaml", texts and texts[0], task_cfg, None),
                                                ("hydra.yaml", texts and texts[1], config, ["hydra"]),
                                                ("overrides.yaml", None, config.hydra.overrides.task, None))}
        if self.files is None:
            write_texts(folder, files)
        else:
            self.written.append(self.files.submit(write_texts, folder, files))

    def end_job(self, config: DictConfig, ret: JobReturn, member: Any) -> JobReturn:
        assert self.hydra_context is not None
        ret.return_value = member.return_value
        ret.status = JobStatus.COMPLETED
        self.hydra_context.callbacks.on_job_end(config=config, job_return=ret)
        return ret


def write_texts(folder: Path, texts: dict[str, str]) -> None:
    """Files named by `texts` keys, holding its values, in `folder` (made if need be): a job's
    .hydra/ files, the bytes hydra.core.utils._save_config writes (utf-8, configtext's texts).
    By os calls, not open(): this runs in a thread beside the jobs' start, and a text file object
    (its buffer, its codec, the terminal check) held the GIL longer than the writing."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        path = os.path.join(folder, name)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            data = memoryview(text.encode("utf-8"))
            while data:
                data = data[os.write(descriptor, data) :]
        except OSError as error:
            error.filename = error.filename or path
            raise
        finally:
            os.close(descriptor)


def set_existing(node: DictConfig, **values: Any) -> None:
    """node.key = value for each of `values`, as `with read_write(node), open_dict(node):` would set
    them. Where the node is writable and holds the keys, without those contexts: each change of a
    flag walks the whole node twice (a job's Hydra node: 156 nodes, for every job)."""
    content = node._content
    if type(content) is not dict or any(key not in content for key in values) or OmegaConf.is_readonly(node):
        with read_write(node), open_dict(node):
            for key, value in values.items():
                node[key] = value
        return
    for key, value in values.items():
        node[key] = value


def use_hydra_config(config: DictConfig) -> None:
    """HydraConfig.set_config(config) without its copy of the `hydra` node (a third of a job's
    start in a 1024-member population): HydraConfig.get() is then this config's own node, read-only
    as set_config leaves it, and interpolations from it into the job's config resolve as there."""
    OmegaConf.set_readonly(config.hydra, True)
    HydraConfig.instance().cfg = config  # type: ignore[assignment]


def remember_sweep_configs(loader: Any) -> None:
    """Composing a job's config costs more than a small job's training, and a sweep composes each
    twice: the sweeper checks the batch (validate_batch_is_legal), then the launcher composes it
    again. Here the loader keeps what it composed, and the launcher claims it for the same job
    (claim_sweep_config: each config handed to one job, as two jobs of equal overrides need two);
    a job that differs from an earlier one only in plain values (optimizer.lr=0.1 → 0.2) is
    composed by applying them to that one's config, as Hydra applies them (derive_sweep_config)."""
    if getattr(loader, "_descend_remembers", False):
        return
    compose = loader.load_sweep_config
    kept: dict[tuple[int, tuple[str, ...]], list[DictConfig]] = {}  # unclaimed configs, by job, in order
    # pickled: unpickling is a deep copy 3x faster than copy.deepcopy; the job's config, and the
    # same without Hydra's node (job_config's, 5x faster than its masked copy); its overrides
    templates: dict[tuple[Any, ...], tuple[bytes, bytes, tuple[str, ...]]] = {}

    def make(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        with kept_from_collection(), interpolations_parsed_once():
            parsed = parse_overrides(sweep_overrides)
            signature = plain_signature(master_config, parsed)
            template = templates.get((id(master_config), signature)) if signature else None
            task_cfg = None
            if template is not None:
                config = derive_sweep_config(template[0], parsed, template_lines=template[2])
                task_cfg = derive_sweep_config(template[1], parsed, choices=template_facts(template[0], config).choices,
                                               template_lines=template[2])
            else:
                config = compose(master_config, sweep_overrides)
            if signature and template is None:
                templates[(id(master_config), signature)] = (pickle.dumps(config), pickle.dumps(job_config(config)),
                                                             tuple(sweep_overrides))
            if signature:
                _DERIVED[id(config)] = Derived(config, task_cfg, (id(master_config), signature), signature[1])
        return config

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        config = make(master_config, sweep_overrides)
        kept.setdefault((id(master_config), tuple(sweep_overrides)), []).append(config)
        return config

    def claim_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        """The launcher's call: the config an earlier call made for these overrides and no job has
        claimed (the sweeper's check discarded it), else a new one."""
        key = (id(master_config), tuple(sweep_overrides))
        queue = kept.get(key)
        if not queue:
            return make(master_config, sweep_overrides)
        config = queue.pop(0)
        if not queue:
            del kept[key]
        return config

    loader.load_sweep_config = load_sweep_config
    loader.claim_sweep_config = claim_sweep_config
    loader._descend_remembers = True


@dataclass
class Derived:
    """How remember_sweep_configs made a job's config: from the template of its `group` (the
    sweep's master config and plain_signature), differing from it in the config `keys` set."""

    config: DictConfig
    task_cfg: DictConfig | None  # its job_config, derived beside it (None: job_config copies it)
    group: tuple[Any, ...]
    keys: tuple[str, ...]


# a job config's id -> how it was made (job_config and PopulationLauncher.save_configs read it)
_DERIVED: dict[int, Derived] = {}


def derivation(config: DictConfig) -> Derived | None:
    derived = _DERIVED.get(id(config))
    return derived if derived is not None and derived.config is config else None


# `key=number`, the form of a sweep's values (optimizer.lr=0.011765, seed=7): a subset of what Hydra's
# override grammar reads as a key (ID, DOT_PATH) and an INT or FLOAT, without `_` separators
NUMBER_OVERRIDE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=([+-]?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)")


def parse_overrides(overrides: list[str]) -> list[Override]:
    """OverridesParser.parse_overrides(overrides), without Hydra's ANTLR parser (0.3 ms an override,
    for every job of a sweep) where it can: a `key=number` override is read as Hydra's visitor reads
    it, int(text) or float(text); any other is parsed by Hydra once per text (a sweep's constant
    overrides come again in every job) and each job given a copy. tests/test_population.py checks
    the Overrides against Hydra's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType, ValueType

    parsed: list[Override] = []
    for line in overrides:
        match = NUMBER_OVERRIDE.fullmatch(line)
        if match is not None:
            key, text, point, exponent = match.groups()
            value = float(text) if point or exponent else int(text)
            parsed.append(Override(type=OverrideType.CHANGE, key_or_group=key, value_type=ValueType.ELEMENT, _value=value,
                                   input_line=line))
            continue
        if line not in _PARSED:
            if len(_PARSED) >= 4096:
                _PARSED.clear()
            (_PARSED[line],) = OverridesParser.create().parse_overrides([line])
        parsed.append(copy.copy(_PARSED[line]))
    return parsed


_PARSED: dict[str, Override] = {}  # an override's text -> Hydra's parse of it (parse_overrides)


def plain_signature(master_config: DictConfig, overrides: list[Override]) -> tuple[Any, ...] | None:
    """What jobs must share for one's config to be derived from another's: the group choices and
    the keys set. None where an override is not a plain `key=value` of the job's config (a
    mapping's value is merged into the config, not set)."""
    groups = set(master_config.hydra.runtime.choices)
    keys, choices = [], []
    for override in overrides:
        key = override.key_or_group
        if override.is_sweep_override() or override.package is not None or override.is_add() or override.is_delete() \
                or override.is_force_add() or key.startswith("hydra") or "/" in key:
            return None
        if isinstance(override.value(), dict):  # merged into the mapping there: what the template's left would stay
            return None
        if key in groups:
            choices.append(override.input_line)
        else:
            keys.append(key)
    return tuple(sorted(choices)), tuple(keys)


def derive_sweep_config(template: bytes, parsed: list[Override], choices: set[str] | None = None,
                        template_lines: tuple[str, ...] = ()) -> DictConfig:
    """The pickled `template` config with `parsed` overrides (the same keys and group choices, other values)
    applied as Hydra's _load_configuration_impl applies them: the values, and where the template
    has Hydra's node, the job's task overrides and its override_dirname (the job folder's name).
    A template without Hydra's node (job_config's) is given the group `choices` of its job. An
    override the template's overrides (`template_lines`) hold as well is there already (changed).
    tests/test_population.py checks the result against Hydra's own composition."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

    config = pickle.loads(template)
    facts = template_facts(template, config) if choices is None else None
    choices = facts.choices if facts is not None else choices
    ConfigLoaderImpl._apply_overrides_to_config([o for o in changed(parsed, template_lines) if o.key_or_group not in choices], config)
    if facts is None:
        return config
    # Hydra's node read as nodes, not by attribute (5 us a step, for two dozen steps a job)
    hydra = config._get_node("hydra")
    with contextlib.ExitStack() as stack:
        if OmegaConf.is_readonly(hydra):  # not as Hydra composes it; each flag's change walks the node
            stack.enter_context(read_write(hydra))
        lines, task = [o.input_line for o in parsed], hydra._get_node("overrides")._get_node("task")
        if len(task) == len(lines):  # the template's list, its entries that differ set
            for index, line in enumerate(lines):
                if task._get_node(index)._value() != line:
                    task[index] = line
        else:
            hydra._get_node("overrides").task = lines
        hydra._get_node("job").override_dirname = get_overrides_dirname(
            overrides=parsed, kv_sep=facts.kv_sep, item_sep=facts.item_sep, exclude_keys=facts.exclude_keys)
    return config


@dataclass(frozen=True)
class TemplateFacts:
    """What derive_sweep_config reads of a template with Hydra's node, the same for all its jobs."""

    choices: frozenset[str]  # hydra.runtime.choices: the config groups
    kv_sep: str  # hydra.job.config.override_dirname's settings
    item_sep: str
    exclude_keys: list[str]


def template_facts(template: bytes, config: DictConfig) -> TemplateFacts:
    """The TemplateFacts of `template`, read from `config` (its unpickled copy) the first time."""
    facts = _FACTS.get(template)  # bytes keep their hash: a template's lookup hashes it once
    if facts is None:
        naming = config.hydra.job.config.override_dirname
        facts = TemplateFacts(frozenset(config.hydra.runtime.choices), naming.kv_sep, naming.item_sep, list(naming.exclude_keys))
        if len(_FACTS) >= 64:
            _FACTS.clear()
        _FACTS[template] = facts
    return facts


_FACTS: dict[bytes, TemplateFacts] = {}


def changed(parsed: list[Override], template_lines: tuple[str, ...]) -> list[Override]:
    """The overrides a job derived from a template must apply: those whose text the template's
    overrides do not hold (a sweep's constants are set there already). All of them where a key
    comes twice or lies under another (a.b, a.b.c): their order then matters."""
    keys = [o.key_or_group for o in parsed]
    if len(set(keys)) < len(keys) or any(key.startswith(other + ".") for key in keys for other in keys):
        return parsed
    there = set(template_lines)
    return [o for o in parsed if o.input_line not in there]


def interpolation_paths(cfg: Container) -> list[tuple[Any, ...]]:
    """The places of cfg's interpolations (`${...}` values, in mappings and lists at any depth), in
    the order OmegaConf.resolve meets them: ("trainer", "default_root_dir")."""
    paths: list[tuple[Any, ...]] = []

    def walk(node: Container, above: tuple[Any, ...]) -> None:
        for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
            child = node._get_node(key)
            if child._is_interpolation():
                paths.append((*above, key))
            elif isinstance(child, Container) and not (child._is_none() or child._is_missing()):
                walk(child, (*above, key))

    walk(cfg, ())
    return paths


def resolve_at(cfg: Container, paths: list[tuple[Any, ...]]) -> None:
    """OmegaConf.resolve(cfg) for a config whose interpolations are all at (or under) `paths`: each
    is resolved in place by OmegaConf's own step of resolve (_resolve_container_value), the rest
    of the config left as it is, resolved already or plain. A path the config does not hold (an
    override that replaced a mapping) resolves the whole config. tests/test_population.py checks
    the result against OmegaConf.resolve."""
    from omegaconf._impl import _resolve_container_value

    try:
        for path in paths:
            parent = cfg
            for key in path[:-1]:
                parent = parent._get_node(key)
            node = parent._get_node(path[-1])
            if node is None:  # not `in`, which resolves the value
                raise KeyError(path)
            if not (resolved_from_hydra(node) or resolved_reference(node, parent)):
                _resolve_container_value(parent, path[-1])
    except Exception:  # resolving is idempotent: what was resolved above stays resolved
        OmegaConf.resolve(cfg)


# `${hydra:runtime.output_dir}/checkpoints`: a Hydra value and a plain suffix, the form of every
# job's folders in its config (trainer, checkpoints, loggers)
HYDRA_VALUE = re.compile(r"\$\{hydra:([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}([A-Za-z0-9_./-]*)")


def resolved_from_hydra(node: Any) -> bool:
    """Resolve `node` in place if it is a HYDRA_VALUE interpolation whose value is a string, as
    OmegaConf does (Hydra's `hydra` resolver selects the key in HydraConfig.get(); the suffix is
    appended; the node sets the result): without OmegaConf's visitor, 0.05 ms a value for every
    job's folders. False, and the node left as it is, for any other node."""
    from descend.configtext import plain_select

    if not isinstance(node, ValueNode):
        return False
    match = HYDRA_VALUE.fullmatch(text) if isinstance(text := node._value(), str) else None
    if match is None:
        return False
    value = plain_select(HydraConfig.get(), match[1])
    if not isinstance(value, str):
        return False
    node._set_value(value + match[2])
    return True


# `${key.path}` or `${.key}`: another entry's value (task.matrix.cols: ${.rows}), from the root or,
# with dots, from the node's own mapping (one dot) or those above it
REFERENCE = re.compile(r"\$\{(\.*)([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")


def resolved_reference(node: Any, parent: Container) -> bool:
    """Resolve `node` (an entry of `parent`) in place if it is a REFERENCE to a plain value, as
    OmegaConf does (the target's value, set on the node, which converts it to its type): without
    OmegaConf's visitor and select, 0.1 ms a job. False, and the node left as it is, where the
    target is not a plain value (an interpolation itself, ???, a mapping, not there)."""
    if not isinstance(node, ValueNode):
        return False
    match = REFERENCE.fullmatch(text) if isinstance(text := node._value(), str) else None
    if match is None:
        return False
    target: Any = parent if match[1] else node._get_root()
    for _ in range(len(match[1]) - 1):
        target = target._get_parent()
    for key in match[2].split("."):
        if type(target) is not DictConfig or type(target.__dict__["_content"]) is not dict:
            return False
        target = target._get_node(key, validate_access=False)
    if not isinstance(target, ValueNode) or target._is_interpolation() or target._is_missing():
        return False
    node._set_value(target._value())
    return True


@contextlib.contextmanager
def interpolations_parsed_once() -> Iterator[None]:
    """OmegaConf's parse of an interpolation (`${hydra:runtime.output_dir}`, a sweep's job folder)
    kept per text while jobs are composed and started: every job resolves the same few texts, and
    ANTLR's Python parser takes 0.1-0.4 ms for each, each time (omegaconf.base calls
    grammar_parser.parse for every resolution). The parse tree is only read by OmegaConf's
    visitor, so one tree serves every resolution of its text. Re-entrant."""
    import omegaconf.base

    original = omegaconf.base.parse
    if getattr(original, "cache_info", None) is not None:  # already inside
        yield
        return
    omegaconf.base.parse = functools.lru_cache(maxsize=4096)(original)
    try:
        yield
    finally:
        omegaconf.base.parse = original


def job_config(config: DictConfig) -> DictConfig:
    """The job's config without Hydra's node: what the task function receives (run_job deep-copies
    the whole config and deletes the node; copying only the rest is the same config, for less;
    a derived config's was derived beside it)."""
    derived = derivation(config)
    if derived is not None and derived.task_cfg is not None:
        return derived.task_cfg
    task_cfg = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
    OmegaConf.set_struct(task_cfg, OmegaConf.is_struct(config))
    return task_cfg


def alike_jobs(configs: list[DictConfig], task_cfgs: list[DictConfig]) -> list[int | None]:
    """For grouping.plan: each job's first earlier job of its derivation group when, of the keys
    their overrides set, those that differ are member settings (they differ in nothing else), else None."""
    from descend.configtext import plain_value
    from descend.population.grouping import member_setting

    def differs(key: str, a: DictConfig, b: DictConfig) -> bool:
        try:
            one, other = plain_value(a, key), plain_value(b, key)
        except (OmegaConfBaseException, AttributeError, KeyError):  # a key OmegaConf cannot select as written (a[0])
            return True
        return type(one) is not type(other) or one != other

    first: dict[tuple[Any, ...], int] = {}
    alike: list[int | None] = []
    for index, config in enumerate(configs):
        derived = derivation(config)
        earlier = first.setdefault(derived.group, index) if derived is not None else index
        alike.append(earlier if earlier != index and all(member_setting(key, task_cfgs[earlier], task_cfgs[index])
                                                         for key in derived.keys
                                                         if differs(key, task_cfgs[earlier], task_cfgs[index])) else None)
    return alike


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
