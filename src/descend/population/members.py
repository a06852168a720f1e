"""A member of a population: one job of the sweep, built as its own run would be, with its own
folder, loggers, optimiser, scheduler, divergence guard and results.

`train_population` is `cli.train` for many jobs at once: it builds the population's Trainer,
fits, and leaves in every job's folder what that job run alone leaves (results.write_results).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from descend import lightning_internals
from descend.population.collection import kept_from_collection
from descend.errors import UserError
from descend.results import new_record, record_failure, record_interrupt, record_stop, writes_in_background

log = logging.getLogger(__name__)

STATEFUL_CALLBACKS = ("descend.callbacks.Checkpoint", "descend.callbacks.DivergenceGuard")
# the file format of Hydra's job log (conf/hydra/default.yaml), for a member's train.log
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] %(message)s"


class Member:
    def __init__(self, cfg: DictConfig, run_dir: Path, task_name: str, number: int, chosen: list[str] = (),
                 overrides: list[str] | None = None) -> None:
        self.number = number  # the job's number in the sweep
        self.chosen = list(chosen)  # the keys that tell it apart in HPARAMS (hparams.chosen_keys)
        self.overrides = overrides  # as its .hydra/overrides.yaml holds them (None: read from there)
        self.cfg = cfg  # resolved: ${hydra:...} interpolations need the job's Hydra config
        self.run_dir = run_dir
        self.record = new_record(task_name)
        self.task: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.loggers: list[Any] = []
        self.callbacks: list[Any] = []  # its own, for the state they hold in its checkpoints
        self.rng: torch.Tensor | None = None
        self.running = False
        self.diverged: Any = None
        self.stopped_at: int | None = None  # the step a pruner stopped it at (pruning.py)
        self.stopped_after_s: float | None = None  # its run's seconds then, every session's (its record's wall_time_s)
        self.return_value = float("inf")  # what the job returns to Hydra (finish)
        # a resumed sweep's member: its own last.ckpt (save_checkpoint's file), loaded in build and
        # Population.on_fit_start, so that the population continues where its members stopped
        self.resume_from: Path | None = None
        self.checkpoint: dict[str, Any] | None = None
        self.saved_with: Any = None  # what else its checkpoints hold: PBT's generator and lineage (events.PopulationPBT)
        self._log_file: logging.FileHandler | None = None  # log_file
        self.final: Any = None  # its results.FinalState (take_final), for finish

    @property
    def session(self) -> Any:
        """Its Sessions callback (built with the member): its sessions' time and resumes; None
        for a member whose build failed before it."""
        from descend.callbacks import Sessions

        return next((c for c in self.callbacks if isinstance(c, Sessions)), None)

    def new_sessions(self) -> Any:
        """The Sessions callback a single run of this job has (build.build_trainer adds it), for the
        state its checkpoints hold: the job's overrides (its .hydra/overrides.yaml, which the
        launcher wrote), its optimiser's and scheduler's numbers, its resumes."""
        from descend.callbacks import Sessions
        from descend.configtext import read_yaml

        saved = self.run_dir / ".hydra" / "overrides.yaml"
        overrides = self.overrides if self.overrides is not None else read_yaml(saved) if saved.is_file() else []
        return Sessions([o for o in overrides or [] if not o.startswith(("resume=", "ckpt_path="))], task=self.task)

    # ---- building: what cli.train does before Trainer.fit ----
    def build(self, made: dict[Any, Any] | None = None) -> None:
        """The job's task with its initial values (its seed), optimiser, scheduler, loggers and
        callbacks. A bad config is this member's failure, in one line, as for a single run.
        `made`: the tasks made for the members before it (build.new_task)."""
        from descend.build import build_task, instantiate, instantiate_alike, seed_everything, validate
        from descend.configtext import resolved_data

        with self.logging():
            try:
                data = resolved_data(self.cfg)  # read here without OmegaConf's checks of every access
                validate(data)
                seed_everything(data["seed"], made)
                self.task = build_task(self.cfg, made)
                self.rng = torch.get_rng_state()  # as its own run holds it when training starts
                config = self.task.configure_optimizers()
                if isinstance(config, dict):
                    self.optimizer, self.scheduler = config["optimizer"], config["lr_scheduler"]
                else:
                    self.optimizer = config
                # the callbacks whose state a checkpoint of its own run holds (see save_checkpoint)
                self.callbacks = [self.callback(name, self.cfg.callbacks[name], made) for name, node in (data.get("callbacks") or {}).items()
                                  if node and node.get("_target_") in STATEFUL_CALLBACKS]
                self.callbacks.append(self.new_sessions())
                if self.resume_from is not None:
                    self.restore(torch.load(self.resume_from, map_location="cpu", weights_only=False))
                nodes = {name: self.cfg.logger[name] for name, settings in (data.get("logger") or {}).items() if settings}
                self.loggers = [instantiate_alike(node, f"logger.{name}", made, **self.logger_resume(node)) if made is not None
                                else instantiate(node, f"logger.{name}", **self.logger_resume(node)) for name, node in nodes.items()]
                self.task.own_loggers = self.loggers
                self.running = True
            except UserError as error:
                self.record.update(error=str(error), user_error=True)
            except Exception as error:
                record_failure(self.record, error)

    def callback(self, name: str, node: DictConfig, made: dict[Any, Any] | None) -> Any:
        """callbacks.<name> made for this member. Members with equal settings copy one made callback
        (build.made_once); one whose settings name this member's folder (the checkpoint's dirpath)
        is its own, made without keeping a copy no other member could take."""
        from descend.build import instantiate, instantiate_alike, made_once

        settings = repr(node)
        if made is None:
            return instantiate(node, f"callbacks.{name}")
        if str(self.run_dir) in settings:
            return instantiate_alike(node, f"callbacks.{name}", made)
        return made_once(made, ("callback", name, settings), lambda: instantiate(node, f"callbacks.{name}"))

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """What a single run's resume restores before its first step, from this member's checkpoint:
        the scheduler, the callbacks' state, the random state and what was logged at its step. The
        parameters and the optimiser's state wait for Population.on_fit_start, after Lightning has
        converted the module (64-true), so that they keep every bit."""
        self.checkpoint = checkpoint
        if self.scheduler is not None and checkpoint.get("lr_schedulers"):
            self.scheduler.load_state_dict(checkpoint["lr_schedulers"][0])
        for callback in self.callbacks:
            state = (checkpoint.get("callbacks") or {}).get(callback.state_key)
            if state:
                callback.load_state_dict(state)
        # Task.on_load_checkpoint's relog (its random state is this member's rng: no population draws
        # from the global generator, dropout keeps a job out of populations)
        self.task.step_state.relog = checkpoint.get("descend_logged_at_step")
        self.rng = checkpoint["descend_rng"]["cpu"][0]

    def logger_resume(self, node: Any) -> dict[str, Any]:
        """TensorBoard hides what the killed run logged after the checkpoint (build.build_trainer)."""
        if self.checkpoint is None or not str(node.get("_target_", "")).endswith("TensorBoardLogger"):
            return {}
        return {"purge_step": int(self.checkpoint["global_step"])}

    def load_training_state(self) -> None:
        """The parameters and the optimiser's state from the checkpoint, into the converted module."""
        if self.checkpoint is not None:
            self.task.load_state_dict(self.checkpoint["state_dict"])
            self.optimizer.load_state_dict(self.checkpoint["optimizer_states"][0])

    def guard(self) -> Any:
        from descend.callbacks import DivergenceGuard

        return next((c for c in self.callbacks if isinstance(c, DivergenceGuard)), None)

    def schedulers(self, interval: str) -> list[tuple[Any, int, str | None]]:
        """Its scheduler, when it steps every `interval` (step or epoch), with frequency and monitor."""
        settings = self.task.scheduler_settings
        if self.scheduler is None or settings.get("interval", "epoch") != interval:
            return []
        return [(self.scheduler, int(settings.get("frequency", 1)), settings.get("monitor"))]

    @functools.cached_property
    def watches_loss(self) -> bool:
        """Whether its scheduler reads the logged train/loss (a plateau scheduler, Task.monitored_value)."""
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)

    @functools.cached_property
    def records_only(self) -> bool:
        """Whether its scalars go to one TensorBoard event file written in place, alone: its rows
        can then be handed over as framed records (records.py, Population.record_rows)."""
        from descend.dashboard import in_place_sink, tensorboard_loggers

        loggers = self.task.writing_loggers()
        return (len(loggers) == 1 and len(tensorboard_loggers(loggers)) == 1
                and in_place_sink(lightning_internals.tensorboard_file_writer(loggers[0])) is not None)

    def stop_pruned(self, step: int, details: dict[str, Any]) -> None:
        """Pruned at `step` (pruning.py): its record says by which rule, and the command that continues
        it alone (null without a checkpoint); its time is the population's until now, as its checkpoint's."""
        from descend.results import resume_point

        self.record.update(status="pruned", pruned={**details, "continue": resume_point(self.run_dir)[1]})
        self.stopped_at = step
        self.stopped_after_s = self.session.wall_time_s() if self.session is not None else None
        self.running = False

    def stop_diverged(self, error: Any) -> None:
        self.record.update(status="diverged", error=str(error))
        self.diverged = error
        self.running = False

    # ---- its checkpoint: a single run's, so that resume=<its folder> continues it alone ----
    def save_checkpoint(self, base: dict[str, Any], optimizer: torch.optim.Optimizer, step: int) -> None:
        """`base` is the population trainer's checkpoint (loops, epoch, step: the same for every
        member); the model, optimiser, scheduler, callbacks, hyper-parameters and random state
        are this member's, copied so that the file holds this member alone."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        from descend.results import replace_atomically

        path = self.run_dir / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        for callback in self.callbacks:
            if isinstance(callback, ModelCheckpoint):
                callback.last_model_path = str(path)
                lightning_internals.mark_checkpoint_saved(callback, step)
        checkpoint = dict(base)
        self.task.on_save_checkpoint(checkpoint)  # what its own run adds (a validation logged at this step)
        checkpoint["state_dict"] = {k: v.detach().clone() for k, v in self.task.state_dict().items()}
        checkpoint["optimizer_states"] = [optimizer.state_dict()]
        checkpoint["lr_schedulers"] = [self.scheduler.state_dict()] if self.scheduler is not None else []
        checkpoint["callbacks"] = {c.state_key: c.state_dict() for c in self.callbacks if c.state_dict()}
        name = lightning_internals.hparams_name(self.task)
        if name is not None:
            checkpoint["hparams_name"] = name
        checkpoint["hyper_parameters"] = dict(self.task.hparams)
        checkpoint["descend_rng"] = {"cpu": self.rng.unsqueeze(0)}
        if self.saved_with is not None:
            checkpoint.update(self.saved_with())
        replace_atomically(path, lambda handle: torch.save(checkpoint, handle))

    # ---- its log ----
    @contextlib.contextmanager
    def logging(self) -> Iterator[None]:
        with log_to([self]):
            yield

    def log_file(self) -> logging.FileHandler:
        """Its train.log's handler, opened at its first record and kept open until finish: each
        opening of a file costs this machine's disk up to a millisecond, for every member."""
        if self._log_file is None:
            self._log_file = logging.FileHandler(self.run_dir / "train.log", delay=True)
            self._log_file.setFormatter(logging.Formatter(LOG_FORMAT))
        return self._log_file

    def write_failed(self, error: OSError) -> None:
        """A file of its results could not be written (finish's, written in the background): its
        record says which and the fix, as a single run's does, if metrics.json can still be written."""
        import sys

        from descend.results import public, write_error_line, write_metrics

        line = write_error_line(error, self.run_dir)
        self.record.update(error=self.record.get("error") or line, user_error=True)
        self.return_value = float("inf")
        print(f"error: {line}", file=sys.stderr)
        with contextlib.suppress(OSError):  # else metrics.json keeps what it said, or is missing
            write_metrics(self.run_dir, public(self.record))

    def trained(self, trainer: Any) -> bool:
        """Whether it has results to write: a step taken, or completed (a resumed run at its end)."""
        return trainer is not None and self.task is not None and (trainer.global_step > 0 or self.record["status"] == "completed")

    def take_final(self, trainer: Any) -> None:
        """Its final metrics and solution files (results.take_final, read by finish), taken before
        any member's files are written: each torch call releases the GIL, and beside the writer
        threads of the files (results.writes_in_background) it waited for them at every call
        (its final metrics took 0.3 ms, not 0.03)."""
        from descend.results import take_final

        if self.trained(trainer):
            with self.logging():
                self.final = take_final(self.task, self.record)

    def finish(self, trainer: Any, wall_time_s: float) -> float:
        """metrics.json, the solution, TensorBoard's final entries and the console report, as
        cli.train writes them; returns what the job returns to Hydra (its final loss, inf unless
        completed)."""
        from descend.results import report, write_results

        record = self.record
        session = self.session
        # the time of every session of its run, as a single run's record adds them up (its checkpoint's Sessions)
        seconds = self.stopped_after_s if self.stopped_after_s is not None else wall_time_s + (session.seconds_before if session is not None else 0.0)
        record["wall_time_s"] = round(seconds, 4)
        if session is not None and session.resumed:
            record["resumed"] = session.resumed
        if trainer is not None and self.task is not None:
            record["steps"] = self.diverged.step if self.diverged else self.stopped_at if self.stopped_at is not None else trainer.global_step
        trained = self.trained(trainer)
        with self.logging():
            stage = self.task.stage_values if trained else {}
            write_results(self.run_dir, self.cfg, record, self.task if trained else None, self.loggers if trained else [], stage,
                          self.diverged, self.chosen, final=self.final)
            # a sweep: summary.md compares with theory; a stop is said once for the population (train_population)
            report(record, self.run_dir, advice=False, console=record["status"] != "stopped")
        self.log_file().close()
        loss = record["metrics"].get("loss")
        return float(loss) if record["status"] == "completed" and loss is not None else float("inf")


@contextlib.contextmanager
def log_to(members: list[Member]) -> Iterator[None]:
    """The log (root logger and descend's console record) goes to the train.log of each member
    given, beside the console, while in this context: Hydra's job logging, for many jobs."""
    global _NOT_FILES
    root, console = logging.getLogger(), logging.getLogger("descend.console")
    saved, outermost = (root.handlers[:], console.handlers[:]), _NOT_FILES is None
    files = [member.log_file() for member in members]
    if outermost:  # inside, the root's handlers are these and the population's 1024 files: not walked again
        _NOT_FILES = [h for h in saved[0] if not isinstance(h, logging.FileHandler)]
    root.handlers = _NOT_FILES + files
    console.handlers = list(files)
    try:
        yield
    finally:
        root.handlers, console.handlers = saved
        if outermost:
            _NOT_FILES = None
        for handler in files:
            handler.flush()


_NOT_FILES: list[logging.Handler] | None = None  # the root's handlers but files, while log_to is open


def share_data(tasks: list[Any]) -> None:
    """The first task's buffers (the data) in every other task that holds equal ones: one copy."""
    template = dict(tasks[0].named_buffers())
    for task in tasks[1:]:
        for name, buffer in list(task.named_buffers()):
            shared = template.get(name)
            if shared is None or buffer is shared:
                continue
            if equal_tensors(shared, buffer):
                module_name, _, leaf = name.rpartition(".")
                task.get_submodule(module_name)._buffers[leaf] = shared


def same_data(a: Any, b: Any) -> bool:
    """Whether two tasks hold equal buffers (data, and anything else a task keeps beside it)."""
    first, second = dict(a.named_buffers()), dict(b.named_buffers())
    return first.keys() == second.keys() and all(equal_tensors(first[k], second[k]) for k in first)


def equal_tensors(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def by_data(members: list[Member]) -> list[list[Member]]:
    """Members split into populations that share their data (a seed may draw the data too)."""
    groups: list[list[Member]] = []
    for member in members:
        home = next((g for g in groups if same_data(g[0].task, member.task)), None)
        if home is None:
            groups.append([member])
        else:
            home.append(member)
    return groups


def population_trainer(cfg: DictConfig, pruner: Any = None) -> Any:
    """The population's Trainer: the members' trainer settings, descend's callbacks in their
    population form (events.py), the pruner where one is set (pruning.PrunerConf, or PBT's
    pbt.PBTConf: one or the other), no logger of its own (every member has its own)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from descend.build import instantiate, trainer_with
    from descend.population.events import POPULATION_FORMS

    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if not node:
            continue
        arguments = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
        callbacks.append(instantiate({"_target_": POPULATION_FORMS[node["_target_"]], **arguments}, f"callbacks.{name}"))
    if pruner is not None:
        from descend.population.events import PopulationPBT, PopulationPruner
        from descend.population.pbt import PBTConf

        callbacks.append(PopulationPBT(pruner) if isinstance(pruner, PBTConf) else PopulationPruner(pruner))
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)  # else none: not Lightning's default
    return trainer_with(cfg, callbacks, logger=False, enable_checkpointing=checkpointing)


@contextlib.contextmanager
def population_checkpoint(population: Any) -> Iterator[str | None]:
    """For members resumed from their checkpoints (all at one step): a checkpoint of the population
    for Lightning's own resume (its loops, global step and epoch, the same in every member's file,
    save_checkpoint's `base`), in a temporary folder; None otherwise. The members' own state is
    theirs (Member.restore, load_training_state)."""
    import tempfile

    first = population.members[0].checkpoint
    if first is None:
        yield None
        return
    base = {k: v for k, v in first.items() if k not in ("state_dict", "optimizer_states", "lr_schedulers", "callbacks",
                                                       "descend_rng", "descend_logged_at_step", "hyper_parameters", "hparams_name")}
    base.update(state_dict=population.state_dict(), lr_schedulers=[], callbacks={},
                optimizer_states=[torch.optim.SGD(population.parameters(), lr=0.0).state_dict()])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "population.ckpt"
        torch.save(base, path)
        yield str(path)


# PyTorch's own threshold (at::internal::GRAIN_SIZE) below which an operation is not worth splitting
# between threads; a population's batched matmul is split over its members whatever their size
GRAIN_SIZE = 32768


def small(members: list[Member]) -> bool:
    """Whether every tensor of the members' task (parameters and data) is below GRAIN_SIZE values."""
    task = members[0].task
    return max((t.numel() for t in (*task.parameters(), *task.buffers())), default=0) < GRAIN_SIZE


@contextlib.contextmanager
def threads_for(members: list[Member]) -> Iterator[None]:
    """One intra-op thread while the population trains, where each member's tensors (parameters and
    data) are small: torch splits a batched matmul over the members however small each matrix is,
    and the threads' synchronisation then costs more than the work (256 members of a 4×4 inverse:
    0.2 ms a step with one thread, 30-60 ms with two on a loaded 2-core machine). Larger members
    keep torch's threads. The numbers do not move: each member's matrix is computed whole either way."""
    if not small(members):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_population(members: list[Member], pruner: Any = None) -> int | None:
    """Train the members as one population and write every member's results. Returns the signal
    that stopped it (stopping.py: SIGTERM, SIGINT, SIGUSR1), or None: every member still training
    is then recorded as stopped at that step, with its checkpoint there and its resume command,
    and the sweep ends as a single run's stop ends it (exit 128 + the signal)."""
    import signal

    from lightning.pytorch.utilities.model_helpers import is_overridden

    from descend.cli import stopped_by
    from descend.population.module import Population, population_of
    from descend.stopping import Stopped, signals_stop_the_run

    started = time.perf_counter()
    trainer = None
    stopped: int | None = None
    try:
        with signals_stop_the_run(), threads_for(members):
            population = population_of(members)
            if pruner is not None and pruner.metric.startswith("val/") and type(population) is Population:
                raise UserError(f"hydra.launcher.{'pbt' if hasattr(pruner, 'interval') else 'pruner'}.metric={pruner.metric}: task {members[0].record['task']} does not validate; "
                                "use train/loss")
            with log_to(members):  # Lightning's lines (its trainer's making too) in every member's train.log
                trainer = population_trainer(members[0].cfg, pruner)
                with population_checkpoint(population) as ckpt_path:
                    trainer.fit(population, ckpt_path=ckpt_path)
                    if is_overridden("test_step", population) and population.active:  # as cli.train tests a run
                        trainer.test(population, verbose=False)
        for member in members:
            if member.running:
                member.record.update(status="completed", stopped_by=stopped_by(trainer))  # the console's, as cli.train says it
    except UserError as error:  # the pruner's metric does not fit the task
        for member in members:
            if member.running:
                member.record.update(error=str(error), user_error=True)
    except Stopped as error:  # at a step: every running member's checkpoint is at that step
        stopped = error.signal
        for member in members:
            if member.running:
                record_stop(member.record, error, member.run_dir)
    except (KeyboardInterrupt, SystemExit):  # a second signal: at once, from the last checkpoint
        stopped = signal.SIGINT
        step = trainer.global_step if trainer is not None else 0
        for member in members:
            if member.running:
                record_interrupt(member.record, step, member.run_dir)
    except Exception as error:  # a bug: every member still running fails with it
        for member in members:
            if member.running:
                record_failure(member.record, error)
    for member in members:
        member.running = False
    wall_time_s = round(time.perf_counter() - started, 4)
    if small(members):  # small members' numbers first (take_final); large ones' solutions are not all held at once
        for member in members:
            member.take_final(trainer)
    with kept_from_collection(), writes_in_background() as writes:  # solutions and records written by threads while the next member's are made
        for member in members:
            member.return_value = member.finish(trainer, wall_time_s)
    for member in members:
        error = writes.failed(member.run_dir)
        if error is not None:
            member.write_failed(error)
    halted = [m for m in members if m.record["status"] == "stopped"]
    if halted:  # each member's record and train.log say it with its own resume= command; the sweep's follows
        steps = sorted({m.record["steps"] for m in halted})
        print(f"population: {len(halted)} members stopped at step {', '.join(map(str, steps))}, each with its checkpoint "
              "there (its metrics.json says how to continue it alone)")
    return stopped
