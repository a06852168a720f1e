"""`python -m train`: compose the config, build task and trainer, fit, test, write the results.

Exit codes of a single run: 0 completed, 1 failed (a bug: traceback in metrics.json),
2 bad input (one-line error, an unwritable run folder included), 3 diverged, 128 + the signal's
number when a signal stopped it (143 SIGTERM, 130 SIGINT, 138 SIGUSR1; stopping.py). In a multirun a job never exits: it records its
status and returns its final loss (inf unless completed), so the remaining jobs still run.
"""

from __future__ import annotations

import gc
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from descend import runlock
from descend.errors import RefusedCommand, UserError, exit_with_error
from descend.multirun import register_resolvers
from descend.prechecks import checked_argv, config_dir
from descend.stopping import exit_code

# at import: a launcher's worker process imports this module to run a job, before Hydra resolves
# the job's folder name (hydra.sweep.subdir) there
register_resolvers()


EXIT_CODES = {"completed": 0, "diverged": 3}


def main() -> None:
    try:
        runlock.TYPED_ARGV[:] = sys.argv[1:]  # what a lock names (runlock.py), before checked_argv rewrites it
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


def job(cfg: DictConfig) -> float:
    """The Hydra task of `python -m train`: run(), with a refusal found inside the run printed as
    its one line and the command's exit status (descend.api calls run() and raises it instead)."""
    try:
        return run(cfg)
    except RefusedCommand as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.code)


def sweep_exit_code() -> int:
    """After a multirun: 1 when a job failed, or completed with an error (a file of its results
    could not be written: a single run exits 2 for it), else 0 (a diverged job is a result, in the summary)."""
    from descend.multirun import finished_sweep

    return 1 if any(row["status"] == "failed" or (row["status"] == "completed" and row.get("error")) for row in finished_sweep) else 0


def say_how_to_resume_sweep(code: object) -> None:
    """A sweep stopped by a signal (130 Ctrl-C, 143 SIGTERM): the command that continues it."""
    from descend.resume_sweep import current_sweep

    if code in (130, 143) and current_sweep:
        print(f"\ndescend: sweep stopped; continue it with: python -m train -m resume={current_sweep[0]}", file=sys.stderr)


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
    # an empty split is asked for in so many words (task.split=[1.0, 0.0, 0.0]: full-batch training)
    warnings.filterwarnings("ignore", message=".*across ranks is zero. Please make sure this was your intention.*")
