"""`python -m train`: compose the config, build task and trainer, fit, test, write the results.

Exit codes of a single run: 0 completed, 1 failed (a bug: traceback in metrics.json),
2 bad input (one-line error, an unwritable run folder included), 3 diverged, 128 + the signal's
number when a signal stopped it (143 SIGTERM, 130 SIGINT, 138 SIGUSR1; stopping.py). In a multirun a job never exits: it records its
status and returns its final loss (inf unless completed), so the remaining jobs still run.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from descend.errors import RefusedCommand, UserError, exit_with_error
from descend.resume import resume_overrides, unquoted
from descend.multirun import register_resolvers
from descend.search import mask_storage_override
from descend.stopping import exit_code

# at import: a launcher's worker process imports this module to run a job, before Hydra resolves
# the job's folder name (hydra.sweep.subdir) there
register_resolvers()


def config_dir() -> Path:
    """The packaged configs inside an installed wheel, else the repository's conf/ (editable install)."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


EXIT_CODES = {"completed": 0, "diverged": 3}


def main() -> None:
    try:
        try:
            sys.argv[1:] = checked_argv(sys.argv[1:])
        except RefusedCommand as error:
            refused_before_hydra(error)
        try:
            hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(job)()
        except SystemExit as stop:
            say_how_to_resume_sweep(stop.code)
            raise
        sys.exit(sweep_exit_code())
    finally:
        # On the way out Python's collector walks every object still alive (torch's, Lightning's,
        # Hydra's): most of a second of every command. Nothing of descend's waits for it: every
        # file is written and closed explicitly. Frozen objects are left out of that walk.
        gc.freeze()


def refused_before_hydra(error: RefusedCommand) -> None:
    """Print the refusal and exit with its code. torchrun starts every rank with the same command:
    rank 0 says it once, the others exit quietly a little later (an earlier exit would have torchrun
    stop rank 0 before it could say anything)."""
    from descend.distributed import launched_rank

    if launched_rank() > 0:
        time.sleep(10)
    else:
        print(f"error: {error}", file=sys.stderr)
    sys.exit(error.code)


def checked_argv(argv: list[str]) -> list[str]:
    """The command's overrides checked before Hydra makes any folder, and rewritten where descend
    adds to Hydra (paths made absolute, resume=, keys of swept groups); raises RefusedCommand
    with the one line."""
    argv = mask_storage_override(resume_overrides(absolute_paths(argv), config_dir()), os.environ)
    check_group_choices(argv, config_dir())
    check_launcher(argv)
    check_overrides(argv, config_dir())
    check_run_dir_free(argv)
    return keys_of_swept_groups(argv, config_dir())


def check_run_dir_free(argv: list[str]) -> None:
    """A single run into a folder another live process trains in (a second resume= of a running
    run, two commands with one hydra.run.dir) is refused before Hydra writes there (runlock.py)."""
    from descend.runlock import check_free

    run_dir = next((unquoted(a.split("=", 1)[1]) for a in reversed(argv) if a.startswith("hydra.run.dir=")), None)
    if run_dir is None or "${" in run_dir or any(a in ("-m", "--multirun") for a in argv):
        return
    resume = next((unquoted(a.split("=", 1)[1]) for a in reversed(argv) if a.startswith("resume=")), None)
    check_free(Path(run_dir), f"resume={resume}" if resume else f"hydra.run.dir={run_dir}")


def job(cfg: DictConfig) -> float:
    """The Hydra task of `python -m train`: run(), with a refusal found inside the run printed as
    its one line and the command's exit status (descend.api calls run() and raises it instead)."""
    try:
        return run(cfg)
    except RefusedCommand as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.code)


# file paths a user gives on the command line (the data, a matrix, a checkpoint)
PATH_KEYS = ("task.data.path", "task.matrix.path", "ckpt_path")


def absolute_paths(argv: list[str]) -> list[str]:
    """Relative paths of PATH_KEYS, resolved against the folder the command was typed in, and so
    stored in the run's .hydra/: `resume=` then works from any folder, and `hydra.job.chdir=true`
    (which moves into the run folder) reads the same file."""
    import os

    from descend.resume import quoted

    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        value = unquoted(value)
        plain = sep and key.lstrip("+") in PATH_KEYS and value not in ("", "null") and "${" not in value and "," not in value
        if plain and not os.path.isabs(os.path.expanduser(value)):
            arg = f"{key}={quoted(Path(os.path.abspath(os.path.expanduser(value))))}"
        out.append(arg)
    return out


def sweep_exit_code() -> int:
    """After a multirun: 1 when a job failed, else 0 (a diverged job is a result, in the summary)."""
    from descend.multirun import finished_sweep

    return 1 if any(row["status"] == "failed" for row in finished_sweep) else 0


def say_how_to_resume_sweep(code: object) -> None:
    """A sweep stopped by a signal (130 Ctrl-C, 143 SIGTERM): the command that continues it."""
    from descend.resume_sweep import current_sweep

    if code in (130, 143) and current_sweep:
        print(f"\ndescend: sweep stopped; continue it with: python -m train -m resume={current_sweep[0]}", file=sys.stderr)


# what hydra/launcher=… and hydra/sweeper=… need, from descend's [sweeps] extra (descend's Optuna
# sweeper is its own plugin, over the optuna package)
PLUGINS = {"parallel": "hydra_plugins.hydra_joblib_launcher", "slurm": "hydra_plugins.hydra_submitit_launcher", "optuna": "optuna"}


def check_launcher(argv: list[str]) -> None:
    """A launcher or sweeper that cannot start gets one line, before Hydra makes a sweep folder."""
    import importlib.util
    import shutil

    for arg in argv:
        group, _, option = arg.partition("=")
        if group not in ("hydra/launcher", "hydra/sweeper", "hparams_search"):
            continue
        plugin = PLUGINS.get("optuna" if group == "hparams_search" else option)
        if plugin and importlib.util.find_spec(plugin) is None:
            exit_with_error(f"{arg} needs {plugin.split('.')[-1]}, which is not installed; pip install -e \".[sweeps]\"")
        if option == "slurm" and shutil.which("sbatch") is None:
            exit_with_error(f"{arg}: SLURM's sbatch is not on PATH, so no job can be submitted from here; run on a SLURM "
                            "login node, or use hydra/launcher=basic (one job after another) or hydra/launcher=parallel")


def keys_of_swept_groups(argv: list[str], conf: Path) -> list[str]:
    """`-m scheduler=step,exponential scheduler.gamma=0.5`: Hydra checks a fixed key against the
    group's default option (scheduler=none has no gamma) and refuses it, although every job has it.
    As a one-value sweep, choice(0.5), it is checked job by job instead (check_overrides did so)."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return argv
    swept = {a.split("=")[0] for a in argv if "=" in a and "," in a.split("=", 1)[1] and (conf / a.split("=")[0]).is_dir()}

    def lifted(arg: str) -> str:
        key, sep, value = arg.partition("=")
        plain = sep and key[:1].isalpha() and "(" not in value and "," not in value
        return f"{key}=choice({value})" if plain and key.split(".")[0] in swept and "." in key else arg

    return [lifted(a) for a in argv]


def check_group_choices(argv: list[str], conf: Path) -> None:
    """`task=nope` gets one line listing the valid options (Hydra's own message is a screenful)."""
    if any(arg.startswith("hydra.searchpath=") for arg in argv):
        return  # options may come from the user's own config folders: Hydra, seeing them all, reports
    for arg in argv:
        group, sep, value = arg.lstrip("+~").partition("=")
        if not sep or "." in group or "/" in group or not (conf / group).is_dir() or group == "hydra":
            continue
        options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        if value.startswith("[") and value.endswith("]"):  # several options of one group at once: logger=[tensorboard,csv]
            value = value[1:-1]
        for choice in value.split(","):  # a sweep over options: task=inverse,linreg
            if choice not in options and choice != "null":
                exit_with_error(f"{group}={choice} is unknown; choose one of: {', '.join(options)}")


def check_overrides(argv: list[str], conf: Path) -> None:
    """A misspelt key or a malformed value gets one line naming it, exit 2, before any folder exists.

    A sweep is checked job by job where jobs differ in a group's option (`scheduler=step,cosine`
    with `scheduler.gamma=0.1` composes for step, not for cosine), with its other swept values at
    their first; an Optuna search once, with its fixed overrides. Flags (--help, --cfg …), hydra.* keys
    and search spaces (interval(), glob()) are Hydra's."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    argv = [a for a in argv if a not in ("-m", "--multirun")]
    if any(a.startswith("-") or a.startswith("hydra.searchpath=") for a in argv):
        return
    overrides = [a for a in argv if not a.startswith("hydra.") and not a.startswith("hydra/")]
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except OverrideParseException as error:
        culprit = next((o for o in overrides if not _parses(parser, o)), " ".join(overrides))
        exit_with_error(f"{culprit}: cannot parse this override ({_one_line(error)}); quote lists and strings, e.g. 'task.model.hidden=[64,64]'")
    jobs = [overrides] if not multirun else _jobs_to_check(parsed, conf)
    resume = next((unquoted(a.split("=", 1)[1]) for a in reversed(argv) if a.startswith("resume=")), None)
    note = f" (resume={resume} changed nothing in the run)" if resume and not multirun else ""
    # a SLURM sweep's jobs run on the cluster's nodes: their GPUs are not this machine's
    here = not any(a.startswith("hydra/launcher=") and "slurm" in a for a in argv)
    for job in jobs or []:
        _compose_or_exit(job, conf, given=overrides if multirun else None, note=note, here=here)


def _jobs_to_check(parsed: list[Any], conf: Path, most: int = 32) -> list[list[str]] | None:
    """The sweep's combinations of group options, each with the other swept keys at their first value
    (None for a search space, e.g. interval(): its values are the sweeper's to draw)."""
    import itertools

    from hydra.core.override_parser.types import Glob

    choices: list[list[str]] = []
    for override in parsed:
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices.append([override.input_line])
        elif override.is_interval_sweep() or isinstance(override.value(), Glob):
            return None
        else:
            values = [f"{key}={value}" for value in override.sweep_string_iterator()]
            group = (conf / key.lstrip("+~")).is_dir()
            choices.append(values if group else values[:1])
    return [list(job) for job in itertools.islice(itertools.product(*choices), most)]


def _compose_or_exit(overrides: list[str], conf: Path, given: list[str] | None, note: str = "", here: bool = True) -> None:
    """Compose one job's config; on failure exit with one line naming the override as given.
    The checks that need no data read (descend's own, the data file's existence, a GPU that is
    not there where the job runs `here`) refuse here too, before Hydra makes a run folder.
    `note` ends a refusal's line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from descend.build import check_files, validate

    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        check_files(cfg)
        validate(cfg, gpu=here)
    except RefusedCommand:
        raise
    except UserError as error:  # a ConfigError or DataError of the composed config
        exit_with_error(f"{error}{note}")
    except (HydraException, OmegaConfBaseException) as error:
        message = _one_line(error)
        groups = [o for o in overrides if "=" in o and (conf / o.split("=")[0].lstrip("+~")).is_dir()]
        where = f" with {' '.join(groups)}" if given is not None and groups else ""
        if message.startswith("Could not override '"):  # a key the config does not have
            key = message.split("'")[1]
            culprit = next((o for o in given or overrides if o.split("=", 1)[0].lstrip("+~") == key), key)
            others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
            swept = {o.split("=", 1)[0].lstrip("+~") for o in given or [] if "," in o.partition("=")[2]}
            exit_with_error(_unknown_key(culprit, key, others, conf, where, swept))
        exit_with_error(message + where)


def _unknown_key(culprit: str, key: str, overrides: list[str], conf: Path, where: str = "", swept: set[str] = frozenset()) -> str:
    """Name the nearest existing key: Hydra's own hint (+key=value) would add the misspelt one."""
    import difflib

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from descend.configtext import flat_config

    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            keys = list(flat_config(OmegaConf.to_container(compose("train", overrides=overrides), resolve=False)))
    except Exception:  # another override is wrong too: Hydra reports that one next
        keys = []
    # a misspelt leaf is matched among its siblings (scheduler.gamma is no typo of scheduler.T_max)
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == parent}
    if siblings:
        close = [siblings[name] for name in difflib.get_close_matches(leaf, list(siblings), n=1)]
    else:  # the parent is misspelt: optimzer.lr
        close = difflib.get_close_matches(key, keys, n=1)
    group = key.split(".")[0]
    owners = options_with_key(key, conf) if group not in swept else []  # a swept group: set it in a sweep of its owners
    if owners and not close:  # task.model.dropout without task=mlp: the option it belongs to is the fix
        chosen = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == group), None)
        current = f"{group}={chosen}" if chosen else f"the default {group}={default_option(group, conf)}"
        listed = ", ".join(f"{group}={o}" for o in owners)
        return f"{culprit}: {key} belongs to {listed}, not to {current}; add {group}={owners[0]} to the command"
    hint = f"did you mean {close[0]}? " if close else ("set it only in a sweep of the options that have it " if where else "")
    return f"{culprit}: {key} is not a key of this config{where}; {hint}(python -m train --cfg job lists every key)"


def options_with_key(key: str, conf: Path) -> list[str]:
    """The options of the key's group whose YAML has it (task.model.dropout: mlp), read as files."""
    from omegaconf import OmegaConf

    from descend.configtext import flat_config

    group, _, rest = key.partition(".")
    if not rest or not (conf / group).is_dir():
        return []
    return sorted(path.stem for path in (conf / group).glob("*.yaml")
                  if rest in flat_config(OmegaConf.to_container(OmegaConf.load(path), resolve=False)))


def default_option(group: str, conf: Path) -> str:
    """The group's option in train.yaml's defaults list."""
    from omegaconf import OmegaConf

    for entry in OmegaConf.load(conf / "train.yaml").defaults:
        if isinstance(entry, dict) or OmegaConf.is_dict(entry):
            for name, option in entry.items():
                if name == group:
                    return str(option)
    return "?"


def _parses(parser: Any, override: str) -> bool:
    try:
        parser.parse_override(override)
        return True
    except Exception:
        return False


def _one_line(error: BaseException) -> str:
    """Hydra's message without its debugging lines, on one line."""
    noise = ("full_key:", "object_type", "reference_type", "Set the environment", "See https://hydra.cc")
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip() and not line.strip().startswith(noise))


def run(cfg: DictConfig) -> float:
    """One Hydra job: train, write metrics.json and the solution, report. Returns the final loss."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from descend.distributed import ddp_children_join_this_job
    from descend.hparams import chosen_keys
    from descend.results import report
    from descend.resume import record_overrides
    from descend.runlock import held, rank_zero

    quiet_lightning()

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    with held(run_dir), ddp_children_join_this_job(hydra_cfg):  # one process per run folder
        if hydra_cfg.mode != RunMode.MULTIRUN and rank_zero():
            record_overrides(run_dir)  # a resume's .hydra/ says what the user typed, not descend's resume= and ckpt_path=
        overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("resume=", "ckpt_path="))]
        record = train(cfg, run_dir, task_name=hydra_cfg.runtime.choices.get("task", "?"), overrides=overrides,
                       chosen=chosen_keys(hydra_cfg))
    if record is None:
        return float("nan")  # a data-parallel rank other than 0: rank 0 reports
    report(record, run_dir, advice=hydra_cfg.mode != RunMode.MULTIRUN)
    if hydra_cfg.mode != RunMode.MULTIRUN and record["status"] != "completed":
        sys.exit(2 if record.get("user_error") else EXIT_CODES.get(record["status"], 1))
    loss = record["metrics"].get("loss")
    return float(loss) if record["status"] == "completed" and loss is not None else float("inf")


def train(cfg: DictConfig, run_dir: Path, task_name: str, overrides: list[str] | None = None,
          chosen: list[str] = ()) -> dict[str, Any] | None:
    from descend.build import build_task, build_trainer, checkpoint_step, validate
    from descend.callbacks import Diverged, Sessions
    from descend.distributed import close_process_group, launched_rank
    from descend.results import (WRITE_ERRNOS, RecordError, new_record, record_failure, record_interrupt, record_stop, report, say,
                                 stage_metrics, write_error_line, write_results)
    from descend.resume_sweep import sweep_checkpoint
    from descend.stopping import Stopped, signals_stop_the_run
    from hydra.core.hydra_config import HydraConfig

    started = time.perf_counter()
    record = new_record(task_name)
    task = trainer = diverged = stopped = None
    lightning_metrics: dict[str, float] = {}  # val/ and test/ metrics, kept as each stage ends
    try:
        with signals_stop_the_run():
            validate(cfg)
            import lightning.pytorch as pl
            from lightning.pytorch.utilities.model_helpers import is_overridden

            if hydra_multirun() and not cfg.get("ckpt_path") and sweep_checkpoint(HydraConfig.get(), run_dir):
                cfg.ckpt_path = sweep_checkpoint(HydraConfig.get(), run_dir)  # a resumed sweep's stopped job (resume_sweep.py)
            pl.seed_everything(cfg.seed, workers=True, verbose=False)
            task = build_task(cfg)
            trainer = build_trainer(cfg, overrides)
            if cfg.get("ckpt_path"):
                say([f"resuming at step {checkpoint_step(cfg.ckpt_path)}: parameters, optimiser, schedulers, data order, "
                     "position in the epoch and random state come from the checkpoint, so the run continues exactly"])
            trainer.fit(task, ckpt_path=cfg.get("ckpt_path"))
            lightning_metrics.update(stage_metrics(trainer))
            if is_overridden("test_step", task):
                trainer.test(task, verbose=False)
                lightning_metrics.update(stage_metrics(trainer))
            record["status"] = "completed"
            record["stopped_by"] = stopped_by(trainer)
    except Diverged as error:
        record.update(status="diverged", error=str(error))
        diverged = error
    except Stopped as error:  # SIGTERM or Ctrl-C, at a step: its checkpoint is written (stopping.py)
        stopped = error
    except UserError as error:
        record.update(error=str(error), user_error=True)
    except OSError as error:  # a full disk or a folder it may not write: one line, not a bug's traceback
        if error.errno in WRITE_ERRNOS:
            record.update(error=write_error_line(error, run_dir), user_error=True)
        else:
            record_failure(record, error)
    except Exception as error:  # a bug or an unforeseen failure: keep the traceback for the report
        record_failure(record, error)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C: Lightning shuts down, then exits
        step = trainer.global_step if trainer is not None else 0
        record_interrupt(record, step, run_dir)
    finally:
        close_process_group()
    sessions = next((c for c in trainer.callbacks if isinstance(c, Sessions)), None) if trainer is not None else None
    # the time of every session of the run: a resumed run's earlier ones come with its checkpoint
    # not the trackers' own setup (MLflow creating its database's tables: seconds, against a short run's training)
    trackers = sum(getattr(logger, "setup_s", 0.0) for logger in trainer.loggers) if trainer is not None else 0.0
    record["wall_time_s"] = round(time.perf_counter() - started - trackers + (sessions.seconds_before if sessions else 0.0), 4)
    if sessions is not None and sessions.resumed:
        record["resumed"] = sessions.resumed  # each resume: its step and the overrides it changed
    if trainer is None and launched_rank() > 0 and record["status"] == "failed":
        # torchrun started every rank with the same bad command: rank 0 says it once. This rank
        # waits for rank 0's record, or torchrun would stop rank 0 before it could say anything
        wait_for(run_dir / "metrics.json", seconds=60)
        sys.exit(2 if record.get("user_error") else 1)
    if trainer is not None and not trainer.is_global_zero:
        if record.get("traceback"):  # a bug on this rank alone: rank 0 sees only its peer vanish
            print(f"error: rank {trainer.global_rank}: {record['error']}\n{record['traceback']}", file=sys.stderr)
        if stopped is not None:  # every rank stopped at the same step; rank 0 writes the record
            sys.exit(exit_code(stopped.signal))
        return None  # data-parallel ranks other than 0 leave writing and reporting to rank 0
    if trainer is not None:
        # a batch of steps may run past the divergence before it is seen: the guard knows the step
        record["steps"] = diverged.step if diverged else trainer.global_step
    if stopped is not None:
        record_stop(record, stopped, run_dir)
    if record["status"] == "failed" and resume_failed_before_its_first_step(trainer):
        # the run stays as it was (metrics.json, .hydra/, event files, train.log): the error goes to the console only
        print(record.get("traceback") or "", end="", file=sys.stderr)
        exit_with_error(f"{record['error']} (resume={run_dir} changed nothing in the run)", 2 if record.get("user_error") else 1)
    # before its first step a run has nothing worth saving: no solution of untrained values, no curves
    trained = trainer is not None and (trainer.global_step > 0 or record["status"] == "completed")
    try:
        write_results(run_dir, cfg, record, task if trained else None, trainer.loggers if trained else [], lightning_metrics, diverged,
                      chosen)
    except RecordError as error:  # one line: the file, the cause, the fix; and whether metrics.json says so
        exit_with_error(error.line + ("" if error.recorded else " (metrics.json could not be written either)"))
    if record.get("interrupted") or stopped is not None:
        report(record, run_dir)
        sys.exit(exit_code(stopped.signal if stopped else signal.SIGINT))  # in a sweep too: a signal ends the sweep
    return record


def stopped_by(trainer: Any) -> str:
    """Which limit ended a completed fit, for the console: max_steps may end an mlp run long before
    the max_epochs a user set (and Lightning's own line about it is dropped, see quiet_lightning)."""
    steps, epochs = trainer.max_steps, trainer.max_epochs
    if steps is not None and steps >= 0 and trainer.global_step >= steps:
        # current_epoch counts the epochs completed (Lightning advances it at an epoch's end)
        unreached = epochs is not None and epochs > 0 and trainer.current_epoch < epochs
        return (f"trainer.max_steps={steps}" + (f", before trainer.max_epochs={epochs} (trainer.max_steps=-1 trains every epoch)"
                                                if unreached else ""))
    if epochs is not None and epochs > 0 and trainer.current_epoch >= epochs:
        return f"trainer.max_epochs={epochs}"
    return "a callback (early stopping) or trainer.max_time" if trainer.should_stop else ""


def resume_failed_before_its_first_step(trainer: Any) -> bool:
    """A resume that failed before training a step writes nothing into its run: the folder goes
    back to what it was (resume.FolderSnapshot); True when that is the case."""
    from descend import resume

    snapshot = resume.snapshot
    if snapshot is None or (trainer is not None and trainer.global_step > snapshot.step):
        return False
    snapshot.restore()
    return True


def hydra_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def wait_for(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def quiet_lightning() -> None:
    """Lightning adds its own console handlers; drop them so each message goes once through
    Hydra's handlers (the console and the run folder's log file)."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (creates the handlers removed below)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tips.addFilter(lambda record: "litlogger" not in record.getMessage())  # an advertisement, not a status
    # descend's summary says which limit stopped the run (cli.stopped_by), with what to change
    tips.addFilter(lambda record: not record.getMessage().startswith("`Trainer.fit` stopped"))
    # lightning's pytree helper warns about a torch deprecation on every run; nothing a user can act on
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # Lightning's all_gather calls a torch function torch deprecates, once per process (ddp_cpu); likewise
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")
