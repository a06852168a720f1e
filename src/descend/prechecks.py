"""What `python -m train` checks of a command before Hydra makes any folder (a refused command
writes nothing), and how it rewrites what it passes on: paths made absolute, `resume=` expanded,
keys of swept groups. `checked_argv` is the one entry: the CLI (cli.main) and the Python API
(api.train / api.sweep) both call it; each check raises RefusedCommand (errors.exit_with_error)
with the one line that names the culprit and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from descend.errors import RefusedCommand, UserError, exit_with_error
from descend.resume import resume_overrides, unquoted
from descend.search import mask_storage_override


def config_dir() -> Path:
    """The packaged configs inside an installed wheel, else the repository's conf/ (editable install)."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


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


# what hydra/launcher=… and hydra/sweeper=… need, from descend's [sweeps] extra (descend's Optuna
# sweeper is its own plugin, over the optuna package)
PLUGINS = {"parallel": "hydra_plugins.hydra_joblib_launcher", "slurm": "hydra_plugins.hydra_submitit_launcher", "optuna": "optuna"}


def check_launcher(argv: list[str]) -> None:
    """A launcher or sweeper that cannot start gets one line, before Hydra makes a sweep folder."""
    import importlib.util
    import shutil

    launcher = next((a.partition("=")[2] for a in reversed(argv) if a.startswith("hydra/launcher=")), "basic")
    for arg in argv:
        key = arg.lstrip("+~").partition("=")[0]
        if key.startswith(("hydra.launcher.pruner", "hydra.launcher.pbt")) and launcher != "population":
            # Hydra would say the key is not in BasicLauncherConf, and suggest a '+' that then fails
            exit_with_error(f"{arg}: {key.split('.')[2]} works inside a population sweep; add hydra/launcher=population")
        if key.startswith("hydra.launcher.") and launcher == "population":
            unknown = unknown_population_key(key)
            if unknown:  # Hydra names the config class and suggests a '+', which then fails in the launcher
                exit_with_error(f"{arg}: {unknown}")
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


def unknown_population_key(key: str) -> str:
    """'' where `key` (hydra.launcher.pruner.rule) is a setting of the population launcher (its
    dataclasses: PopulationLauncherConf, PrunerConf, PBTConf), else what is wrong and the nearest one."""
    import dataclasses
    import difflib
    import typing

    from hydra_plugins.descend_population_launcher.population_launcher import PopulationLauncherConf

    node: Any = PopulationLauncherConf
    above = "hydra.launcher"
    for part in key.split(".")[2:]:
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return ""  # inside a free-form setting (pbt.bounds.lr): the launcher checks it
        names = [f.name for f in dataclasses.fields(node) if not f.name.startswith("_")]
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"did you mean {above}.{close[0]}? " if close else ""
            return f"{above}.{part} is not a setting of the population launcher; {hint}its settings there: {', '.join(names)}"
        node = typing.get_type_hints(node).get(part)
        above = f"{above}.{part}"
    return ""


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

    from descend.build import check_files, check_task, validate

    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        check_files(cfg)
        validate(cfg, gpu=here)
        check_task(cfg)
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
