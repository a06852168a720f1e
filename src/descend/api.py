"""descend from Python: train and sweep in-process, load a run, query every run under a folder.

    import descend
    run = descend.train("task=inverse", optimizer__lr=0.3, quiet=True)
    run.status, run.metrics["ref/rel_error"], run.solution["W"], run.curves["train/loss"].values
    runs = descend.sweep("optimizer.lr=0.1,0.46", quiet=True)
    table = descend.runs("outputs", task="inverse", status="completed")

`train` and `sweep` are `python -m train` and `python -m train -m` without leaving the process:
the same checks, composition, folders, files and console, the same code (cli.run); bad input
raises `DescendError` with the CLI's one line instead of exiting. They can be called many times
in one process (a notebook): the root logger is left as it was found, nothing is frozen.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from descend.errors import RefusedCommand, UserError


class DescendError(UserError):
    """A command descend refuses (bad input, a missing file, no GPU): the CLI's one-line error."""


@dataclass(frozen=True)
class Curve:
    """One logged scalar: optimiser steps and values, as TensorBoard stored them (float32)."""

    steps: list[int]
    values: list[float]


@dataclass(frozen=True)
class Run:
    """A run's folder and what it wrote (metrics.json, .hydra/, solution, event files), read on access."""

    folder: Path

    @property
    def record(self) -> dict[str, Any]:
        """metrics.json as written: status, task, steps, wall_time_s, metrics, error, …"""
        return json.loads((self.folder / "metrics.json").read_text())

    @property
    def status(self) -> str:
        return self.record["status"]

    @property
    def steps(self) -> int:
        return self.record["steps"]

    @property
    def metrics(self) -> dict[str, float | None]:
        """The final metrics; a non-finite value (a diverged loss) is None, as in metrics.json."""
        return self.record["metrics"]

    @property
    def error(self) -> str | None:
        return self.record.get("error")

    @property
    def config(self) -> Any:
        """The resolved config the run used (.hydra/config.yaml) as an OmegaConf DictConfig."""
        from omegaconf import OmegaConf

        return OmegaConf.load(self.folder / ".hydra" / "config.yaml")

    @property
    def overrides(self) -> list[str]:
        from descend.configtext import read_yaml

        return read_yaml(self.folder / ".hydra" / "overrides.yaml") or []

    @property
    def solution(self) -> dict[str, Any]:
        """The learned tensors (solution.pt), loaded with weights_only=True: {name: torch.Tensor}."""
        import torch

        path = self.folder / "solution.pt"
        if not path.is_file():
            raise DescendError(f"{path} not found: a run that failed before its first step saves no solution")
        return torch.load(path, weights_only=True)

    @property
    def curves(self) -> dict[str, Curve]:
        """Every scalar series in the run's TensorBoard event files, read with TensorBoard's own
        reader, by its metric's name (`train/loss`, which TensorBoard files under `descent/`):
        {name: Curve(steps, values)}."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        from descend.tags import metric_name

        events = EventAccumulator(str(self.folder), size_guidance={"scalars": 0})
        # a resumed run's purge marker is read as "out of order … likely caused by a TensorFlow
        # restart" and warned about on every read: that purge is the resume working as designed
        reader_log = logging.getLogger("tensorboard")
        level = reader_log.level
        reader_log.setLevel(logging.ERROR)
        try:
            events.Reload()
        finally:
            reader_log.setLevel(level)
        return {metric_name(tag): Curve([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
                for tag in events.Tags()["scalars"]}

    def resume(self, *overrides: str, quiet: bool = False, **config: Any) -> Run:
        """Continue this run in its folder from its last checkpoint (`python -m train resume=…`)."""
        from descend.resume import quoted

        return train(f"resume={quoted(self.folder.resolve())}", *overrides, quiet=quiet, **config)

    def __repr__(self) -> str:
        try:
            record = self.record
        except (OSError, ValueError):
            return f"Run({str(self.folder)!r}, no metrics.json)"
        loss = record.get("metrics", {}).get("loss")
        return f"Run({str(self.folder)!r}, {record['status']}, steps={record['steps']}, loss={loss})"


def load(folder: str | Path) -> Run:
    """The run in `folder` (a run folder, or a sweep's job folder). Raises DescendError when the
    folder holds no run (no metrics.json)."""
    run = Run(Path(folder).expanduser())
    if not (run.folder / "metrics.json").is_file():
        raise DescendError(f"{run.folder}: no metrics.json here; point load() at a run folder (outputs/runs/<date>/<time>_<task>)")
    return run


# ---- every run under a folder, as a table ----
def runs(root: str | Path = "outputs", **filters: Any) -> Any:
    """Every run and sweep job under `root` (any depth) as a table, one row per run folder (absolute paths):
    `folder`, `sweep` (the sweep folder of a job, else None), `status`, `task`, `steps`,
    `wall_time_s`, every final metric by its name (`loss`, `ref/rel_error`, `val/mse`, …) and
    every config key flattened (`optimizer.lr`, `optimizer._target_`, `task.rank`, …).

    Reads each run's metrics.json and .hydra/config.yaml only (libyaml where PyYAML has it), so
    thousands of runs take seconds. `filters` keep the rows whose column equals the value, or for
    which a callable returns True; `__` stands for `.`: `runs(task="inverse", optimizer__lr=0.1,
    status="completed")`, `runs(loss=lambda v: v is not None and v < 1e-3)`.

    Returns a pandas.DataFrame where pandas is installed (`pip install -e ".[table]"`), else a
    list of dicts, one per row, sorted by folder."""
    rows = [row for row in _rows(Path(root).expanduser().resolve()) if _kept(row, filters)]
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows)


def _rows(root: Path) -> Iterator[dict[str, Any]]:
    import yaml

    from descend.configtext import read_yaml, resolved_flat

    for record_file in sorted(root.rglob("metrics.json")):
        folder = record_file.parent
        config_file = folder / ".hydra" / "config.yaml"
        try:
            record = json.loads(record_file.read_text())
            config = read_yaml(config_file) if config_file.is_file() else {}
        except (OSError, ValueError, yaml.YAMLError):
            continue  # a run being written, or not a descend run: not a row
        if not isinstance(record, dict) or "status" not in record:
            continue
        sweep = folder.parent if (folder.parent / "multirun.yaml").is_file() else None
        yield {"folder": str(folder), "sweep": None if sweep is None else str(sweep), "status": record["status"],
               "task": record.get("task"), "steps": record.get("steps"), "wall_time_s": record.get("wall_time_s"),
               **(record.get("metrics") or {}), **resolved_flat(config or {})}


def _kept(row: dict[str, Any], filters: dict[str, Any]) -> bool:
    for key, wanted in filters.items():
        value = row.get(key.replace("__", "."))
        if not (wanted(value) if callable(wanted) else value == wanted):
            return False
    return True


# ---- training in-process ----
def train(*overrides: str, quiet: bool = False, **config: Any) -> Run:
    """One run, as `python -m train <overrides>`: returns its Run, whatever its status (completed,
    diverged, failed). Keyword arguments are overrides too, with `__` for `.`:
    `train("task=lowrank", optimizer__lr=0.05)`. `quiet=True` prints nothing (train.log still
    records the console). Raises DescendError for bad input, as the CLI exits 2."""
    argv = [*overrides, *keyword_overrides(config)]
    if any(a in ("-m", "--multirun") for a in argv):
        raise DescendError("train() runs one job; use descend.sweep() for -m")
    results = _run(argv, multirun=False, quiet=quiet)
    return results[0]


def sweep(*overrides: str, launcher: str | None = None, quiet: bool = False, **config: Any) -> list[Run]:
    """A multirun, as `python -m train -m <overrides>` (with `hydra/launcher=<launcher>` when
    given: basic, parallel, population, slurm): every job's Run, in job order; the sweep's
    summary is written at its root as by the CLI."""
    argv = [*overrides, *keyword_overrides(config)]
    if launcher:
        argv.append(f"hydra/launcher={launcher}")
    return _run(argv, multirun=True, quiet=quiet)


def keyword_overrides(config: dict[str, Any]) -> list[str]:
    """{"optimizer__lr": 0.1} → ["optimizer.lr=0.1"]; lists and bools as Hydra writes them."""
    def text(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(text(v) for v in value) + "]"
        return "null" if value is None else str(value)

    return [f"{key.replace('__', '.')}={text(value)}" for key, value in config.items()]


def _run(argv: list[str], multirun: bool, quiet: bool) -> list[Run]:
    from descend import prechecks, runlock

    runlock.TYPED_ARGV[:] = argv  # what a lock names: the overrides given, not the rewritten ones
    try:
        argv = prechecks.checked_argv([*argv, "-m"] if multirun else argv)
    except UserError as error:
        raise DescendError(str(error)) from None
    argv = [a for a in argv if a not in ("-m", "--multirun")]
    if quiet:
        argv += ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
    exits: list[int] = []  # a single run's exit code, where cli.run ended it with one
    refusals: list[str] = []  # a refusal found inside a run, with its one line
    with _console(quiet), _root_logger_kept():
        folder = _hydra_app(argv, multirun, exits, refusals)
    if refusals and not multirun:
        raise DescendError(refusals[0])
    if exits and exits[0] == 130:  # Ctrl-C (the run's record says where it stopped)
        raise KeyboardInterrupt
    if not multirun:
        if exits and exits[0] == 2:  # bad input found in the run (a file, a value): the CLI's one line
            raise DescendError(load(folder).error or f"refused; see {folder / 'train.log'}")
        return [load(folder)]
    # every job of the sweep, whichever launcher or sweeper ran it, in job order
    return [Run(job.resolve()) for job in sorted(folder.iterdir()) if (job / "metrics.json").is_file()]


def _hydra_app(argv: list[str], multirun: bool, exits: list[int], refusals: list[str]) -> Path:
    """What hydra.main does for `python -m train`, without parsing sys.argv or exiting: Hydra's
    app object (private API: hydra.main offers no in-process entry), built as hydra.main builds
    it for cli.run, so that the job's name, search path and .hydra/ files are the CLI's. Returns
    the run's folder, or the sweep's."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    from descend import cli

    def task(cfg: Any) -> float:
        try:
            return cli.run(cfg)
        except RefusedCommand as error:  # refused inside the run (a resume, a file it cannot write)
            refusals.append(str(error))
            return float("inf")
        except SystemExit as stop:  # cli.run ends a single run that did not complete with its exit code
            exits.append(int(stop.code or 0))
            return float("inf")

    GlobalHydra.instance().clear()
    search_path = create_automatic_config_search_path(None, "descend.cli", str(cli.config_dir()))
    app = Hydra.create_main_hydra2(task_name="cli", config_search_path=search_path)  # hydra.main names it after cli.py
    try:
        if multirun:
            from descend.multirun import started_sweep

            started_sweep.clear()
            app.multirun(config_name="train", task_function=task, overrides=[*argv, "hydra.mode=MULTIRUN"])
            return started_sweep[0]  # set by the sweep's callback (descend.multirun.SweepSummary)
        job = app.run(config_name="train", task_function=task, overrides=[*argv, "hydra.mode=RUN"])
        return Path(job.hydra_cfg.hydra.runtime.output_dir)
    finally:
        GlobalHydra.instance().clear()
        # the population launcher leaves its last batch's jobs frozen out of the collector's scans
        # (kept_from_collection) for a process that ends with the sweep; this one goes on
        gc.unfreeze()


@contextlib.contextmanager
def _console(quiet: bool) -> Iterator[None]:
    """quiet: the console's lines go nowhere, errors and warnings included (Hydra's console
    handler binds to sys.stdout when it is configured, inside this context); train.log keeps
    them, and a refusal is raised as DescendError."""
    if not quiet:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def _root_logger_kept() -> Iterator[None]:
    """Hydra configures the root logger for each job (console and the run's train.log); a
    notebook's own logging is put back afterwards, and the run's log file closed."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
