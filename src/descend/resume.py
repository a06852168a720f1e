"""`python -m train resume=<run folder>`: continue a run in its own folder, with its own config.

A resume is a new session of the same run. Everything here runs before Hydra, so a resume that is
refused writes nothing into the run folder (Hydra rewrites `.hydra/` as soon as a job starts):

- the checkpoint must be readable (checkpoints.read_checkpoint);
- an override may change only what can change from the checkpoint's step on (RESUMABLE): the step
  budget, the optimiser's and scheduler's numbers, logging, picture and checkpoint intervals;
  anything else (task, data, model shape, optimiser or scheduler type, precision, seed) is refused
  with the value the run has;
- the composed config must pass descend's own checks (build.validate);
- a completed run with nothing left to train is left as it is.

`resume=auto` (for a job that a scheduler requeues with the same command): resume the run folder
named by `hydra.run.dir` when it holds a checkpoint, else start the run there.

`resume=<sweep folder>` continues a whole sweep (resume_sweep.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from descend.errors import exit_with_error

# keys an override may change on resume, from the checkpoint's step on (a trailing dot: the whole group)
RESUMABLE = ("trainer.max_steps", "trainer.max_epochs", "trainer.log_every_n_steps", "trainer.enable_progress_bar",
             "trainer.enable_model_summary", "callbacks.images.", "callbacks.progress_bar.", "callbacks.divergence_guard.",
             "callbacks.checkpoint.every_n_train_steps", "callbacks.checkpoint.min_interval_s", "steps_per_batch")
# keys resume= sets itself, never kept from the saved overrides
OWN = ("resume", "ckpt_path", "hydra.run.dir")
# the optimiser's and scheduler's keys that are numbers but not hyper-parameters of the update
NOT_NUMBERS = ("_target_", "_partial_", "interval", "monitor", "mode")


def resume_overrides(argv: list[str], conf: Path | None = None) -> list[str]:
    """Turn `resume=<folder>` into the run's original overrides, each key once at its latest value,
    plus its folder and last checkpoint. Exits with one line (code 2) for a refused resume, and with
    code 0 when a completed run has nothing left to train."""
    global snapshot, recorded
    snapshot = recorded = None  # of an earlier command in this process (the Python API)
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume:
        return argv
    value = unquoted(resume[-1].split("=", 1)[1])
    rest = [a for a in argv if not a.startswith("resume=")]
    if value == "auto":
        return auto_resume(rest, conf)
    folder = Path(value).expanduser()
    from descend.resume_sweep import is_sweep_folder, sweep_resume_overrides

    if is_sweep_folder(folder):  # a sweep's folder: the whole sweep continues (resume_sweep.py)
        return sweep_resume_overrides(folder, rest)
    saved = folder / ".hydra" / "overrides.yaml"
    checkpoint = folder / "checkpoints" / "last.ckpt"
    for path, what in ((saved, "its saved config"), (checkpoint, "a checkpoint to resume from")):
        if path == checkpoint and not path.is_file() and saved.is_file() and not keeps_checkpoints(folder):
            exit_with_error(f"resume={folder}: the run kept no checkpoints (it ran without callbacks.checkpoint, e.g. "
                            "callbacks=none); start it again, with the default callbacks to be able to resume it")
        if not path.is_file():
            exit_with_error(f"resume={folder}: {path} not found; point resume= at a run folder with {what}, "
                            "or at a sweep's folder (with its multirun.yaml)")
    from descend.checkpoints import CheckpointError, read_checkpoint
    from descend.configtext import read_yaml

    try:
        step = int(read_checkpoint(checkpoint, key=f"resume={folder}")["global_step"])
    except CheckpointError as error:
        exit_with_error(str(error))
    typed = [o for o in read_yaml(saved) or [] if key_of(o) not in ("resume", "ckpt_path")]
    original = [o for o in typed if key_of(o) not in OWN]
    check_changes(folder, original, rest)
    merged = merge(original, rest)
    if conf is not None:
        check_values(folder, merged, conf)
    if not started_by_rank_zero():
        nothing_left(folder, step, original, merged)
    folder = folder.resolve()
    snapshot = FolderSnapshot(folder, step)
    recorded = merge(typed, rest)
    return [*merged, f"hydra.run.dir={quoted(folder)}", f"ckpt_path={quoted(checkpoint.resolve())}", f"resume={quoted(folder)}"]


class FolderSnapshot:
    """The run folder as the resume found it, to put back if the resume fails before its first
    step: Hydra rewrites `.hydra/` and appends to train.log as the job starts, and the loggers open
    new event files. The bytes of `.hydra/*` and metrics.json are kept, the sizes of the other
    files (train.log is cut back), and files that were not there are removed. Checkpoints are
    never touched: nothing writes one before the first step."""

    def __init__(self, folder: Path, step: int) -> None:
        self.folder = folder
        self.step = step  # the checkpoint's step: a session that ends there trained nothing
        files = self._files()
        self.sizes = {p: p.stat().st_size for p in files}
        self.contents = {p: p.read_bytes() for p in files if p.parent.name == ".hydra" or p.name == "metrics.json"}

    def _files(self) -> list[Path]:
        from descend.runlock import LOCK  # the lock is the running process's, not the run's record

        return [p for p in self.folder.rglob("*") if p.is_file() and "checkpoints" not in p.relative_to(self.folder).parts
                and p.name != LOCK]

    def restore(self) -> None:
        for path in self._files():
            if path not in self.sizes:
                path.unlink()
            elif path in self.contents:
                path.write_bytes(self.contents[path])
            elif path.stat().st_size > self.sizes[path]:
                with path.open("r+b") as handle:
                    handle.truncate(self.sizes[path])
        for path, content in self.contents.items():  # one that was replaced by a rename and is gone
            if not path.exists():
                path.write_bytes(content)


snapshot: FolderSnapshot | None = None  # set by resume_overrides for the job this process runs
# the run's overrides as the user typed them (the first command's, then each resume's), without
# the resume=, ckpt_path= and hydra.run.dir= descend adds for Hydra: what record_overrides writes
recorded: list[str] | None = None


def record_overrides(run_dir: Path) -> None:
    """After Hydra wrote the resumed run's .hydra/: its overrides say what the user typed (the
    resume itself is recorded in metrics.json's "resumed", callbacks.Sessions), in overrides.yaml
    and in hydra.yaml's hydra.overrides.task alike."""
    from omegaconf import OmegaConf

    if recorded is None:
        return
    OmegaConf.save(OmegaConf.create(list(recorded)), run_dir / ".hydra" / "overrides.yaml")
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        saved = OmegaConf.load(hydra_file)
        saved.hydra.overrides.task = list(recorded)
        OmegaConf.save(saved, hydra_file)


def auto_resume(argv: list[str], conf: Path | None) -> list[str]:
    """`resume=auto`: the same command resumes its own run folder (`hydra.run.dir=…`) when that holds
    a checkpoint, and starts the run there otherwise; what a requeued SLURM job needs."""
    run_dir = next((unquoted(a.split("=", 1)[1]) for a in argv if a.startswith("hydra.run.dir=")), None)
    if run_dir is None:
        exit_with_error("resume=auto needs the run's folder: add hydra.run.dir=<folder>, e.g. "
                        "hydra.run.dir=outputs/slurm/${oc.env:SLURM_JOB_ID} (the same for every requeue of the job)")
    if "${" in run_dir:  # resolve ${oc.env:…} as Hydra will
        from omegaconf import OmegaConf

        run_dir = OmegaConf.create({"d": run_dir}).d
    folder = Path(run_dir)
    if (folder / "checkpoints" / "last.ckpt").is_file() and (folder / ".hydra" / "overrides.yaml").is_file():
        rest = [a for a in argv if not a.startswith("hydra.run.dir=")]
        return resume_overrides([*rest, f"resume={quoted(folder)}"], conf)
    return argv


def keeps_checkpoints(folder: Path) -> bool:
    """Whether the run in `folder` was configured with descend's checkpoint callback."""
    try:
        return bool(saved_value(folder, "callbacks.checkpoint"))
    except Exception:  # an unreadable config: the not-found line says enough
        return True


def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge(original: list[str], new: list[str]) -> list[str]:
    """The saved overrides with the new ones applied: each key once, at its latest value, in first-seen order."""
    merged: dict[str, str] = {}
    for override in [*original, *new]:
        merged[key_of(override)] = override
    return list(merged.values())


def resumable(key: str, value: str) -> bool:
    """Whether `key=value` may change on resume (RESUMABLE, or a number of the optimiser or scheduler)."""
    import yaml

    if key.startswith("hydra.") and key not in OWN:
        return True  # how Hydra reports, not what is computed
    if any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE):
        return True
    group, _, name = key.partition(".")
    if group in ("optimizer", "scheduler") and name and "." not in name and name not in NOT_NUMBERS:
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return False
        return isinstance(parsed, (int, float)) and not isinstance(parsed, bool)
    return False


def check_changes(folder: Path, original: list[str], new: list[str]) -> None:
    """Refuse, with the value the run has, any override that changes what cannot change on resume."""
    for override in new:
        key = key_of(override)
        value = override.split("=", 1)[1] if "=" in override else ""
        if key in OWN or resumable(key, value):
            continue
        had = saved_value(folder, key)
        if not override.startswith("~") and str(had) == unquoted(value):
            continue  # the value it already has
        exit_with_error(f"resume={folder}: {override} cannot change on resume (the run has {key}={had}); a resume may change "
                        "trainer.max_steps/max_epochs, the optimizer's and scheduler's numbers (e.g. optimizer.lr), logging, "
                        "picture and checkpoint intervals; start a new run for anything else")


def saved_value(folder: Path, key: str) -> Any:
    """The run's value of `key`: a group's option from .hydra/hydra.yaml, else from .hydra/config.yaml."""
    from omegaconf import OmegaConf

    if "." not in key and (folder / ".hydra" / "hydra.yaml").is_file():
        choices = OmegaConf.load(folder / ".hydra" / "hydra.yaml").hydra.runtime.choices
        if key in choices:
            return choices[key]
    config = OmegaConf.load(folder / ".hydra" / "config.yaml")
    try:
        return OmegaConf.select(config, key, default=None)
    except Exception:  # an interpolation only Hydra resolves (${hydra:…})
        return OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)


def check_values(folder: Path, overrides: list[str], conf: Path) -> None:
    """The resumed config must pass the checks a new run passes (optimizer.lr=0 is refused here,
    before Hydra rewrites the run's .hydra/ with it)."""
    from hydra import compose, initialize_config_dir

    from descend.build import validate
    from descend.errors import UserError

    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("train", overrides=[o for o in overrides if not key_of(o).startswith("hydra.")])
        validate(cfg)
    except UserError as error:
        exit_with_error(f"resume={folder}: {error}")
    except Exception:  # a malformed override: check_overrides names it next
        return


def nothing_left(folder: Path, step: int, original: list[str], merged: list[str]) -> None:
    """A completed run whose step budget is not raised: say so and change nothing (exit 0)."""
    from descend.results import read_metrics

    record = read_metrics(folder)
    if not record or record.get("status") != "completed":
        return
    budget = {key_of(o): o.split("=", 1)[1] for o in merged if key_of(o) in ("trainer.max_steps", "trainer.max_epochs")}
    unchanged = budget == {key_of(o): o.split("=", 1)[1] for o in original if key_of(o) in budget}
    max_steps = budget.get("trainer.max_steps")
    reached = max_steps is not None and max_steps.lstrip("-").isdigit() and 0 <= int(max_steps) <= step
    if unchanged or reached:
        print(f"resume={folder}: the run completed at step {step} and its step budget leaves nothing to train; nothing "
              "changed (to train longer: trainer.max_steps=<more>)")
        sys.exit(0)


def started_by_rank_zero() -> bool:
    """A data-parallel rank that Lightning started by re-running this command, after rank 0 had
    rewritten the run's overrides (torchrun starts every rank itself, before anything is written)."""
    import os

    return os.environ.get("LOCAL_RANK", "0") != "0" and "TORCHELASTIC_RUN_ID" not in os.environ


def unquoted(value: str) -> str:
    """A resume= value as given, or as quoted() wrote it (DDP ranks re-run the rewritten command)."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1].replace("\\'", "'")
    return value


def quoted(path: Path) -> str:
    """A path as one Hydra override value: a sweep job's folder has '=' in its name (00_optimizer.lr=0.1)."""
    return "'" + str(path).replace("'", "\\'") + "'"
