"""How a run stops at a step when a signal asks it to: SIGTERM (SLURM, Kubernetes, `kill`), SIGINT
(Ctrl-C) and SIGUSR1 (SLURM's warning before a time limit).

The handler only sets a flag. descend's step (stepping.run_group) reads it before each optimiser
step, so a group of `steps_per_batch` steps ends at the step where the signal arrived, with every
step already taken kept. The trainer then ends the batch as usual: the checkpoint callback writes
last.ckpt at that step (the moment periodic checkpoints are written, so it resumes exactly) and the
task raises `Stopped`, which the run records as status `stopped` with the `resume=` command; the
process exits 128 + the signal's number (143 for SIGTERM, 130 for SIGINT, 138 for SIGUSR1).

A second signal while the first is being handled stops at once (KeyboardInterrupt), as Ctrl-C
pressed twice does elsewhere.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from descend import lightning_internals

# SIGUSR1: what SLURM sends ahead of a time limit or preemption (sbatch --signal=USR1@90)
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    """The signal that asked the run to stop (its number), or None; a plain attribute, read per step."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def handle(self, number: int, frame: Any) -> None:
        if self.signal is not None:  # the second one: stop now, without a checkpoint
            raise KeyboardInterrupt
        self.signal = number


stop_request = StopRequest()


class Stopped(Exception):
    """The run stopped at `step` because of signal `signal` (its checkpoint, if any, is at that step)."""

    def __init__(self, step: int, number: int) -> None:
        super().__init__(f"stopped by {signal.Signals(number).name} at step {step}")
        self.step = step
        self.signal = number


def install() -> None:
    """descend's handlers for SIGNALS (main thread only: Python's rule for signals).

    Called when a run starts and again when its training starts: Lightning's signal connector
    registers its own SIGTERM handler as fit starts, which ends the run at the next batch's end or
    inside validation, without a checkpoint; descend's replaces it for the fit, and Lightning puts
    back the handlers it found (these) on teardown."""
    if threading.current_thread() is not threading.main_thread():
        return
    for number in SIGNALS:
        signal.signal(number, stop_request.handle)


@contextmanager
def signals_stop_the_run() -> Iterator[StopRequest]:
    """Within: SIGTERM, SIGINT and SIGUSR1 request a stop (see module doc). After: the previous handlers."""
    main = threading.current_thread() is threading.main_thread()
    previous = {number: signal.getsignal(number) for number in SIGNALS} if main else {}
    stop_request.signal = None
    install()
    try:
        yield stop_request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def agreed_stop(trainer: Any) -> int | None:
    """The signal that stops the run after this batch, agreed by every data-parallel rank: a
    signal may reach one rank (`kill` of rank 0) or reach the ranks at different steps, and they
    must stop at the same step or the survivors would wait forever in the next gradient reduction.
    One small all-reduce per batch under DDP (a batch is one step there); nothing otherwise."""
    number = stop_request.signal
    if trainer.world_size == 1:
        return number
    import torch

    agreed = trainer.strategy.reduce(torch.tensor(float(number or 0), device=trainer.strategy.root_device), reduce_op="max")
    return int(agreed.item()) or None


def validation_follows(trainer: Any) -> bool:
    """Whether this batch ends the epoch and the epoch's validation runs next: a stop (and its
    checkpoint) then waits for it, as a periodic checkpoint does, or a resume would skip it."""
    return bool(trainer.enable_validation and lightning_internals.epoch_ends_after_this_batch(trainer))


def exit_code(number: int) -> int:
    """A shell's code for a process ended by signal `number`: 128 + number (143 SIGTERM, 130 SIGINT, 138 SIGUSR1)."""
    return 128 + int(number)
