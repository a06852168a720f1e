"""What a run leaves behind besides TensorBoard and checkpoints: metrics.json and the solution.

    metrics.json   {"status": completed|pruned|diverged|stopped|failed, "task", "steps",
                    "pruned": {"rule", "step", "metric", "value", "rank", "of", "continue"} for a
                    population member a pruner stopped (population/pruning.py),
                    "lineage": [{"step", "copied", "folder", "metric", "value", "from_value",
                    "values": {key: new value}}, ...] for a population member that copied another
                    under population-based training (population/pbt.py),
                    "wall_time_s": seconds of every session of the run added up (a resumed run's too),
                    "metrics": {...}, "error": one line or null, "traceback": text or null,
                    "theory": {...} for quadratic tasks (theory.py),
                    "resumed": [{"step", "overrides"}, ...] for a resumed run (callbacks.Sessions)}
    solution.pt    dict of tensors: torch.load(path, weights_only=True)
    solution.npz   the same arrays: numpy.load(path)
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

STATUSES = ("completed", "pruned", "diverged", "stopped", "failed")


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN or Infinity; a diverged loss is written as null
    return value if math.isfinite(value) else None


def replace_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file beside `path`, then rename it over `path`: a kill mid-write leaves the old file
    intact, and a Ctrl-C waits until the file is whole (torch.save interrupted in the middle fails
    with an error of its own instead of stopping). Inside writes_in_background (the main thread
    only), `write` fills a buffer here and a writer thread puts it on disk."""
    if _writing_in_background():  # the bytes made now, from the caller's objects as they stand
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()
        write = lambda handle: handle.write(data)  # noqa: E731
    write_in_folder(path, functools.partial(replace_file, path, write))


def replace_file(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """`write` fills `path.partial`, which then replaces `path`; an OS error names `path` and
    leaves no partial file. In this thread, now (replace_atomically's own step)."""
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as handle:
            write(handle)
        os.replace(partial, path)
    except OSError as error:  # disk full, no permission, read-only: no partial file left behind
        partial.unlink(missing_ok=True)
        if error.filename is None:
            error.filename = str(path)
        raise


def write_in_folder(path: Path, write: Callable[[], None]) -> None:
    """write() (which writes the file `path`) now, or inside writes_in_background (the main thread
    only) by the writer thread of path's folder, after the files given it before."""
    if _writing_in_background():
        _background.submit(path, write)  # type: ignore[union-attr]
        return
    with ctrl_c_deferred():
        write()


def _writing_in_background() -> bool:
    return _background is not None and threading.current_thread() is threading.main_thread()


class BackgroundWrites:
    """Files (replace_atomically's) put on disk by writer threads while the main thread goes on.
    On this kind of machine creating a file is most of the cost of writing a small one (0.1 to
    0.5 ms of the kernel's time, on a virtual disk), and a population's end writes four files a
    member. The files of one folder go to one thread, in order, so a file written twice ends as
    the second write left it. `failures` holds the OS errors, by file, once `wait` returns."""

    def __init__(self, threads: int = 2) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pools = [ThreadPoolExecutor(1, thread_name_prefix="descend-writes") for _ in range(threads)]
        self.futures: list[tuple[Path, Any]] = []
        self.failures: dict[Path, OSError] = {}

    def submit(self, path: Path, write: Callable[[], None]) -> None:
        """write() (which writes `path`) by the thread of path's folder; its OSError is path's failure."""
        pool = self.pools[hash(path.parent) % len(self.pools)]
        self.futures.append((path, pool.submit(write)))

    def wait(self) -> None:
        """Every file written (or failed); an error that is not an OS error is raised."""
        for pool in self.pools:
            pool.shutdown(wait=True)
        for path, future in self.futures:
            error = future.exception()
            if isinstance(error, OSError):
                self.failures[path] = error
            elif error is not None:
                raise error
        self.futures = []

    def failed(self, folder: Path) -> OSError | None:
        """The first error writing a file in `folder`, if any."""
        return next((error for path, error in self.failures.items() if path.parent == folder or folder in path.parents), None)


_background: BackgroundWrites | None = None


@contextlib.contextmanager
def writes_in_background(threads: int = 2) -> Iterator[BackgroundWrites]:
    """replace_atomically's files written by BackgroundWrites within this context; every one is
    on disk (or failed: `failures`) when it ends, an exception in it included."""
    global _background
    writes, previous = BackgroundWrites(threads), _background
    _background = writes
    try:
        yield writes
    finally:
        _background = previous
        writes.wait()


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold SIGINT while in this context, then raise KeyboardInterrupt if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def write_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    assert record["status"] in STATUSES
    record = dict(record, metrics={k: _finite_or_none(float(v)) for k, v in record.get("metrics", {}).items()})
    text = (json.dumps(record, indent=2) + "\n").encode()
    replace_atomically(run_dir / "metrics.json", lambda handle: handle.write(text))


def write_solution(run_dir: Path, tensors: dict[str, Any]) -> None:
    """solution.pt and solution.npz of the solution's tensors (solution_files) in run_dir."""
    write_files(run_dir, solution_files(tensors))


def solution_files(tensors: dict[str, Any]) -> dict[str, bytes]:
    """solution.pt (torch.save) and solution.npz (numpy.savez) of the tensors, as bytes."""
    import numpy as np
    import torch

    # a copy: a view (a population member's rows) would save its whole storage
    cpu = {name: t.detach().cpu().clone() for name, t in tensors.items()}
    pt, npz = io.BytesIO(), io.BytesIO()
    torch.save(cpu, pt)
    # in the tensors' own dtype (not float64: twice the size for no digit more); numpy has no bfloat16
    np.savez(npz, **{name: (t.float() if t.dtype == torch.bfloat16 else t).numpy() for name, t in cpu.items()})
    return {"solution.pt": pt.getvalue(), "solution.npz": npz.getvalue()}


def write_files(run_dir: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        replace_atomically(run_dir / name, functools.partial(_write_bytes, data))


def _write_bytes(data: bytes, handle: IO[bytes]) -> None:
    handle.write(data)


@dataclass
class FinalState:
    """What a trained run's end reads of its task, before anything is written (take_final): its
    final metrics (final_metrics), which solution tensors are not finite, and the solution files."""

    metrics: dict[str, float]
    non_finite: list[str]
    files: dict[str, bytes]


def take_final(task: Any, record: dict[str, Any]) -> FinalState:
    """The task's FinalState (final_metrics may mark the record failed). A population takes every
    member's before writing any: each torch call releases the GIL, and beside the threads writing
    files (writes_in_background) it waited for them at every call."""
    import torch

    solution = task.solution()
    return FinalState(final_metrics(task, record), [name for name, t in solution.items() if not bool(torch.isfinite(t).all())],
                      solution_files(solution))


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_metrics(trainer: Any) -> dict[str, float]:
    """Lightning's val/ and test/ metrics at the end of a stage (the next stage resets them)."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "test/"))}


def final_metrics(task: Any, record: dict[str, Any]) -> dict[str, float]:
    """The task's loss and distances to the closed form at its final parameters.

    A run that failed or diverged keeps its own error if these cannot be computed (it may have no
    usable parameters). A completed run whose results cannot be computed is not completed: it
    becomes `failed`, with this error and its traceback (a bug, such as a tensor left on another
    device), rather than `completed` with no metrics."""
    try:
        return task.final_metrics()
    except Exception as error:
        if record["status"] == "completed":
            record["status"] = "failed"
            record_failure(record, error)
        return {}


def new_record(task_name: str) -> dict[str, Any]:
    """A run's record before it trains: failed until it says otherwise."""
    return {"status": "failed", "task": task_name, "steps": 0, "metrics": {}, "error": None, "traceback": None}


# what a full disk, a missing permission or a read-only folder raise while writing
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def write_error_line(error: OSError, run_dir: Path) -> str:
    """One line for an OS error while writing: the file, the cause, the fix and what continues the run."""
    where = error.filename or run_dir
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space on that disk"
    else:
        fix = "make that folder writable (permissions, a read-only mount)"
    return f"cannot write {where}: {error.strerror or error}; {fix}; {continue_from(run_dir).replace('checkpoint at', 'last good checkpoint at')}"


def record_failure(record: dict[str, Any], error: BaseException) -> None:
    """A bug or an unforeseen failure: its one line, and its traceback for the report."""
    import traceback

    record.update(error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())


def record_interrupt(record: dict[str, Any], step: int, run_dir: Path) -> None:
    """A stop that could not wait for its step (a second Ctrl-C): where it was, and what continues it."""
    record.update(status="stopped", error=f"interrupted at step {step}; {continue_from(run_dir)}", interrupted=True)


def record_stop(record: dict[str, Any], stopped: Any, run_dir: Path) -> None:
    """A signal's stop (stopping.Stopped): status `stopped`, the step, and the command that continues it."""
    import signal

    name = signal.Signals(stopped.signal).name
    record.update(status="stopped", steps=stopped.step, error=f"stopped by {name} at step {stopped.step}; {continue_from(run_dir)}")


def continue_from(run_dir: Path) -> str:
    """How to continue a stopped run: the resume= command when it has a checkpoint, else why not."""
    step, command = resume_point(run_dir)
    if command is None:
        return "it has no checkpoint to continue from (callbacks.checkpoint is off or none was written yet); start it again"
    return f"checkpoint at step {step}; continue with: {command}"


def resume_point(run_dir: Path) -> tuple[int | None, str | None]:
    """The step of run_dir's checkpoint and `python -m train resume=<run_dir>`; (None, None) without a readable one."""
    from descend.checkpoints import CheckpointError, checkpoint_step
    from descend.resume import quoted

    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    try:
        step = checkpoint_step(checkpoint) if checkpoint.is_file() else None
    except CheckpointError:
        step = None
    return (None, None) if step is None else (step, f"python -m train resume={quoted(run_dir.resolve())}")


def write_results(run_dir: Path, cfg: Any, record: dict[str, Any], task: Any | None, loggers: list[Any],
                  stage: dict[str, float], diverged: Any | None, chosen: list[str] = (),
                  final: FinalState | None = None) -> None:
    """What a finished run leaves: metrics.json always; for a run that trained (`task` given) the
    final metrics (after `stage`'s val/test ones), theory's numbers, the solution (`final`: the
    task's take_final, taken before; else now), and TensorBoard's final/* scalars and HPARAMS
    entry (`chosen`: the keys set on the command line that tell this run apart,
    hparams.chosen_keys). A diverged run's loss is the one its error names."""
    from descend.dashboard import close_event_file, log_to_tensorboard

    if task is not None:
        final = final if final is not None else take_final(task, record)
        record["metrics"] = {**stage, **final.metrics}
        if task.theory_summary():  # a quadratic task: what its Hessian predicts (theory.py)
            record["theory"] = task.theory_summary()
        if diverged:  # the loss the error message names, not the one after the blow-up
            record["metrics"]["loss"] = diverged.loss
        if record["status"] == "completed":
            mark_non_finite(record, final.non_finite)
        try:
            write_files(run_dir, final.files)
        except OSError as error:  # the disk is full or the folder read-only: metrics.json may still fit
            if error.errno not in WRITE_ERRNOS:
                raise
            record.update(error=record.get("error") or write_error_line(error, run_dir), user_error=True)
            try:
                write_metrics(run_dir, public(record))
            except OSError:
                raise RecordError(record["error"], recorded=False) from None
            raise RecordError(record["error"], recorded=True) from None
    try:
        write_metrics(run_dir, public(record))
    except OSError as error:
        if error.errno not in WRITE_ERRNOS:
            raise
        raise RecordError(record.get("error") or write_error_line(error, run_dir), recorded=False) from None
    if task is not None:
        if record["status"] != "stopped":  # a stopped run's HPARAMS entry waits for its end
            log_to_tensorboard(loggers, cfg, record, run_dir.name, list(chosen))
        for logger in loggers:  # other trackers' end of the run: final/*, files, status (mlflow_logger.py)
            if hasattr(logger, "log_run_end"):
                logger.log_run_end(run_dir, record)
            close_event_file(logger)


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The record as metrics.json holds it, without the flags the CLI reads."""
    return {k: v for k, v in record.items() if k not in ("user_error", "interrupted", "stopped_by")}


class RecordError(Exception):
    """The run's files could not all be written (an OS error, `line` says which file and the fix);
    `recorded`: whether metrics.json holds the run's state all the same."""

    def __init__(self, line: str, recorded: bool) -> None:
        super().__init__(line)
        self.line = line
        self.recorded = recorded


def mark_non_finite(record: dict[str, Any], non_finite: list[str]) -> None:
    """A run that ended with a non-finite loss or parameters (the solution's tensors named
    `non_finite`) diverged, whatever the guard saw (it may be off, or check every n steps): status
    `diverged`, and the error says what is not finite."""
    loss = record["metrics"].get("loss")
    bad = list(non_finite)
    if loss is not None and not math.isfinite(loss):
        bad.insert(0, f"loss = {loss}")
    if bad:
        record.update(status="diverged", error=f"training ended at step {record['steps']} with non-finite values ({', '.join(bad)}); "
                      "the learning rate is likely too large: lower optimizer.lr, or check every step with "
                      "callbacks.divergence_guard.every_n_steps=1")


def report(record: dict[str, Any], run_dir: Path, advice: bool = True, console: bool = True) -> None:
    """The console summary: status, final loss, distance to the closed form, where to look.
    A run that failed before its first step has no results and no curves: just the error and the folder.
    `advice`: the warning with the lr that converges, for a run far from its optimum (not in sweeps);
    `console=False`: to train.log only (a stopped population's members: one line says it for all)."""
    trained = record["steps"] > 0 or record["status"] == "completed"
    lines = []
    if trained:
        lines.append(f"descend: {record['task']} {record['status']} after {record['steps']} steps in {record.get('wall_time_s', 0):.2f} s"
                     + (f", stopped by {record['stopped_by']}" if record.get("stopped_by") else ""))
        shown = "   ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items() if isinstance(v, float))
        lines += [f"  {shown}"] if shown else []
        if record.get("theory"):
            lines.append("  theory  " + "   ".join(f"{k} {v:.4g}" for k, v in record["theory"].items()))
        lines += far_from_optimum(record) if advice else []  # a sweep's summary.md compares its jobs with theory
        # the folder above the run's: TensorBoard names a run after its path below --logdir, and
        # the run folder itself would be named "." (in the run list, the tables, HPARAMS)
        lines += [f"  run folder: {run_dir}", f"  tensorboard --logdir {run_dir.parent}   (this run: {run_dir.name})"]
    else:
        lines += [f"descend: {record['task']} failed before its first step", f"  run folder: {run_dir} (metrics.json says why)"]
    errors = [f"error: {record['error']}"] if record["error"] else []
    if record.get("traceback"):
        errors.append(f"  (traceback in {run_dir / 'metrics.json'})")
    say(["", *lines], errors, console)


FAR = 0.1  # ref/rel_error above which a quadratic run's end gets the lr that would converge


def far_from_optimum(record: dict[str, Any]) -> list[str]:
    """A completed quadratic run that ended far from its closed form (`ref/rel_error` > FAR): one
    warning with theory's lr_optimal and about how many steps plain SGD needs there to shrink the
    error a thousandfold (its contraction is (κ − 1)/(κ + 1) per step)."""
    theory, error = record.get("theory"), record["metrics"].get("ref/rel_error")
    if record["status"] != "completed" or not theory or error is None or not error > FAR:
        return []
    kappa = theory["condition_number"]
    contraction = (kappa - 1) / (kappa + 1)
    steps = math.ceil(math.log(1e-3) / math.log(contraction)) if 0 < contraction < 1 else 1
    # lr=auto (build.optimal_lr) serves plain SGD only: its summary's lr_limit is lr_critical
    from descend.theory import plain_sgd_summary

    auto = "optimizer.lr=auto takes it" if plain_sgd_summary(theory) else "optimizer=sgd optimizer.lr=auto takes it"
    line = (f"warning: ref/rel_error {error:.3g} after {record['steps']} steps: the run stopped far from the optimum. Plain "
            f"SGD is fastest at optimizer.lr={theory['lr_optimal']:.4g} (theory's lr_optimal; {auto}), "
            f"where about {steps} steps shrink the error 1000x (trainer.max_steps)")
    if "heavy_ball_rate" in theory:
        line += (f"; heavy ball at optimizer.lr={theory['heavy_ball_lr_optimal']:.4g} "
                 f"optimizer.momentum={theory['heavy_ball_momentum_optimal']:.4g}")
    return [line]


def say(lines: list[str], errors: list[str] = (), console: bool = True) -> None:
    """Print to the console (errors on stderr) and write the same lines to the run's train.log:
    the log is the console's record (Hydra's logging config sends `descend.console` to the file only).
    `console=False`: to the log only. Each list is one log record (a block under one time stamp,
    as theory's lines are): a population writes a block for each of its members."""
    import logging

    record = logging.getLogger("descend.console")
    for block, level, stream in ((lines, logging.INFO, sys.stdout), (errors, logging.ERROR, sys.stderr)):
        if block:
            if console:
                print("\n".join(block), file=stream)
            record.log(level, "\n".join(block))
