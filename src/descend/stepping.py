"""How one step runs: several optimiser steps per Lightning batch, each exactly a plain PyTorch step.

Lightning's per-batch machinery (loop, hooks, closure, logger bookkeeping) costs several times
a step of descend's small problems. So a task runs with manual optimisation and each
`training_step` takes K optimiser steps through the `LightningOptimizer`, which still counts
every one of them in `trainer.global_step`. K is planned so that every step-based event falls
on a batch boundary: checkpoints, pictures, epoch ends, `max_steps` (see `StepPlan`). Logging
happens inside a batch, at its exact step, from values buffered on the device and written once
per batch (`MetricBuffer`), so nothing synchronises the host with the device on every step
(but 16-mixed: torch's GradScaler reads its overflow flag back at every step).

Whatever automatic optimisation did is done here, per optimiser step: the closure (LBFGS
evaluates it many times), mixed-precision scaling (through `manual_backward` and Lightning's
precision plugin), gradient clipping, the learning-rate schedulers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from descend import lightning_internals, replay, stopping
from descend.tags import tensorboard_tag

# devices whose losses descend's step reads on the host at every step (see run_group)
HOST_CHECKED = ("cpu",)


@dataclass(frozen=True)
class StepSettings:
    """What descend's step needs from the config beyond the optimiser: `steps_per_batch` and clipping.

    Lightning refuses `gradient_clip_val` with manual optimisation, so descend takes it from
    `trainer.*` and clips itself, with Lightning's own `clip_gradients`."""

    steps_per_batch: int = 100  # the config's steps_per_batch: optimiser steps in one Lightning batch, at most
    clip_val: float | None = None
    clip_algorithm: str | None = None


class StepGroup:
    """The batches of K consecutive optimiser steps, handed to one `training_step`.

    Deliberately not a list or tuple: Lightning's device transfer walks those, and the tensors
    are already where they belong (task buffers), so it leaves this object alone."""

    __slots__ = ("batches",)

    def __init__(self, batches: Sequence[Any]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)


def group_sizes(start: int, end: int, intervals: Iterable[int], steps_per_batch: int) -> list[int]:
    """Sizes of consecutive groups covering steps [start, end): every multiple of each interval
    is a group boundary, and no group is longer than `steps_per_batch`."""
    intervals = [n for n in intervals if n > 0]
    sizes = []
    step = start
    while step < end:
        following = min([end, step + steps_per_batch, *((step // n + 1) * n for n in intervals)])
        sizes.append(following - step)
        step = following
    return sizes


class StepPlan:
    """Plans the groups of an epoch from the trainer's state when the epoch's iteration starts.

    Boundaries: `trainer.max_steps`, the epoch's end, and every callback's step events. A callback
    declares them with an `event_every_n_steps` attribute (descend's pictures and checkpoints do;
    Lightning's ModelCheckpoint is read directly). A callback that needs Lightning's per-step
    hooks without declaring them needs `steps_per_batch=1`.
    """

    def __init__(self, trainer: Any, steps_per_batch: int) -> None:
        self.trainer = trainer
        self.steps_per_batch = steps_per_batch if self._groups_allowed() else 1

    def _groups_allowed(self) -> bool:
        trainer = self.trainer
        # DDP prepares its gradient reduction once per forward of the wrapped module, i.e. once
        # per training_step: one optimiser step per batch keeps every step's all-reduce.
        if trainer.world_size > 1:
            return False
        # these count Lightning batches, which would then be groups rather than steps
        if trainer.val_check_interval not in (None, 1.0) or trainer.limit_train_batches not in (None, 1.0):
            return False
        return True

    def intervals(self) -> list[int]:
        from lightning.pytorch.callbacks import ModelCheckpoint

        found = []
        for callback in self.trainer.callbacks:
            every = getattr(callback, "event_every_n_steps", None)
            if every is None and isinstance(callback, ModelCheckpoint):
                every = lightning_internals.checkpoint_every_n_steps(callback)
            if every:
                found.append(int(every))
        return found

    def sizes(self, steps_left_in_epoch: int) -> list[int]:
        """Group sizes for the rest of the epoch, from the current global step."""
        start = self.trainer.global_step
        end = start + steps_left_in_epoch
        max_steps = self.trainer.max_steps
        if max_steps is not None and max_steps >= 0:
            end = min(end, max_steps)
        return group_sizes(start, end, self.intervals(), self.steps_per_batch)


class MetricBuffer:
    """Scalars of the logging steps inside a batch, kept as device tensors and written to the
    loggers with one transfer when the batch ends (or up to the step where a run diverged).

    A step's entry is a dict of values (`add`), or a `Row` already in its written form (`add_row`:
    a population's members, whose rows are made for all of them at once)."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, dict[str, Any] | Row | bytes]] = []

    def add(self, step: int, metrics: dict[str, Any]) -> None:
        # On the CPU a value is read at once (the same float the flush would read): a small tensor
        # held until the batch ends sits in the heap between the logging step's large temporaries
        # (the distances' float64 copies) and keeps glibc from reusing them, so a 100-step batch of
        # a 2000×2000 problem grew the process by tens of MB per logging step. A GPU's values stay
        # on the device until the flush (one transfer, no wait per logging step).
        metrics = {k: v.item() if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v for k, v in metrics.items()}
        if self.pending and self.pending[-1][0] == step and not isinstance(self.pending[-1][1], bytes):
            last = self.pending[-1][1]
            if isinstance(last, Row):
                self.pending[-1] = (step, last := dict(zip(last.names, last.values)))
            last.update(metrics)
        else:
            self.pending.append((step, dict(metrics)))

    def add_row(self, step: int, row: Row | bytes) -> None:
        """A step's row as it is written: host floats, log10 companions included (with_log10), or
        its TensorBoard record already framed (records.py; for a buffer that TensorBoard alone reads)."""
        self.pending.append((step, row))

    def flush(self, loggers: Sequence[Any], through_step: int | None = None) -> None:
        """Write every buffered step (up to `through_step`), then forget the buffer."""
        kept = [(s, m) for s, m in self.pending if through_step is None or s <= through_step]
        self.pending = []
        if not kept or not loggers:
            return
        values = iter(host_floats([v for _, m in kept if isinstance(m, dict) for v in m.values() if isinstance(v, torch.Tensor)]))
        rows = [(step, metrics) if isinstance(metrics, (Row, bytes)) else
                (step, Row.of(with_log10({k: (next(values) if isinstance(v, torch.Tensor) else float(v)) for k, v in metrics.items()})))
                for step, metrics in kept]
        for logger in loggers:
            write_rows(logger, rows)


class Row:
    """One logged step's scalars as written: their names (a tuple shared by the rows of a tag
    set) and host floats in the same order. Cheaper than a dict for a population's rows."""

    __slots__ = ("names", "values")

    def __init__(self, names: tuple[str, ...], values: Sequence[float]) -> None:
        self.names, self.values = names, values

    @classmethod
    def of(cls, metrics: dict[str, float]) -> Row:
        return cls(tuple(metrics), tuple(metrics.values()))

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.names, self.values))


def read_back(buffers: Sequence[MetricBuffer]) -> None:
    """The pending device values of several buffers (a population's members) replaced by Python
    floats with one transfer, so that their flushes need none: a transfer per member would make
    the host wait for a GPU once per member per group."""
    slots = [(metrics, key) for buffer in buffers for _, metrics in buffer.pending if isinstance(metrics, dict)
             for key, value in metrics.items() if isinstance(value, torch.Tensor)]
    for (metrics, key), value in zip(slots, host_floats([metrics[key] for metrics, key in slots])):
        metrics[key] = value


def host_floats(tensors: list[torch.Tensor]) -> list[float]:
    """One-element tensors as Python floats: read one by one on the CPU (cheapest there), and
    with a single transfer from a GPU (one read each would wait for the device every time)."""
    if not tensors:
        return []
    if all(t.device.type == "cpu" for t in tensors):
        return [t.item() for t in tensors]
    return torch.stack([t.detach().double().reshape(()) for t in tensors]).tolist()


# Quantities that fall across many decades. TensorBoard's default linear axis shows them as a line
# on zero after the first steps, so each also gets a log10 companion: train/loss → train/log10_loss.
DECAYING = ("train/loss", "train/grad_norm", "ref/rel_error", "ref/excess_loss", "theory/excess_loss",
            "ref/eigenvalue_rel_error", "baseline/eigenvalue_rel_error")


def log10_tag(tag: str) -> str:
    group, _, name = tag.rpartition("/")
    return f"{group}/log10_{name}" if group else f"log10_{name}"


LOG10_TAGS = {tag: log10_tag(tag) for tag in DECAYING}


def with_log10(row: dict[str, float]) -> dict[str, float]:
    """The row plus the log10 companions of its decaying quantities, from host floats (once per
    logged step, when the buffer is written). A value ≤ 0 (an exact zero loss; an excess loss a
    rounding error below the optimum) has no logarithm and gets no point, as on a log axis; an
    infinite one stays infinite, so a diverged run's companion ends where its linear curve does."""
    out = row
    for tag, companion in LOG10_TAGS.items():
        value = row.get(tag)
        if value is not None and value > 0:
            if out is row:
                out = dict(row)
            out[companion] = math.log10(value)
    return out


def write_scalars(logger: Any, row: dict[str, float], step: int) -> None:
    """One step's scalars through a Lightning logger (write_rows)."""
    write_rows(logger, [(step, Row.of(row))])


def write_rows(logger: Any, rows: list[tuple[int, Row]]) -> None:
    """Steps' scalars through a Lightning logger. TensorBoard gets each step's as one event, each
    under its group's tag (tags.py): its writer costs about as much per event as a small step, and
    log_metrics writes one per scalar. The events are made from one template per set of tags
    (ScalarEvents) and reach the file in one write, for a population writes a row per member per
    logged step (a third of a 256-member sweep's time, made row by row)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    if not isinstance(logger, TensorBoardLogger):
        for step, row in rows:
            logger.log_metrics(row.as_dict(), step=step)  # a framed record (bytes) has no as_dict: TensorBoard's alone
        return
    events = getattr(logger, "_descend_scalar_events", None)
    if events is None:
        events = logger._descend_scalar_events = ScalarEvents()
    events.write(lightning_internals.tensorboard_file_writer(logger), rows)


class ScalarEvents:
    """The Event protos a logger's rows of scalars become, one per set of tags, filled in for each
    row (a Summary built anew for each row cost three times as much) and serialised: the bytes
    torch's SummaryWriter.add_summary writes for the same row (tests/test_event_files.py)."""

    def __init__(self) -> None:
        self.templates: dict[tuple[str, ...], Any] = {}

    def write(self, file_writer: Any, rows: list[tuple[int, Row | bytes]]) -> None:
        """The rows' events into the file: framed records (records.py) pass as they are."""
        import time

        from descend.dashboard import in_place_sink, write_records
        from descend.records import frame

        now = time.time()
        sink = in_place_sink(file_writer)
        if sink is None:  # TensorBoard's own writer (a remote store), which frames each event itself
            write_records(file_writer, [self.event(step, row, now) for step, row in rows])
        else:
            sink.write_framed(b"".join(row if isinstance(row, bytes) else frame(self.event(step, row, now)) for step, row in rows))

    def event(self, step: int, row: Row, wall_time: float) -> bytes:
        """The row's serialised Event."""
        event = self.template(row.names)
        event.wall_time, event.step = wall_time, int(step)
        for value, number in zip(event.summary.value, row.values):
            value.simple_value = number
        return event.SerializeToString()

    def template(self, names: tuple[str, ...]) -> Any:
        event = self.templates.get(names)
        if event is None:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary

            event = Event(summary=Summary(value=[Summary.Value(tag=tensorboard_tag(name), simple_value=0.0) for name in names]))
            self.templates[names] = event
        return event

def log_last_step(task: Any, optimizer: torch.optim.Optimizer) -> None:
    """The curves' point at the run's last step, at its final parameters: a logging step's row is
    taken before that step's update, so without it the curves ended a logging interval before
    final/* (90 against 100). What a logging step logs: the loss, the distances, theory's
    prediction, the learning rate and the gradient norm (taken with autograd.grad, which leaves
    the parameters' .grad as the last step left them)."""
    loggers = task.writing_loggers()
    step = task.global_step
    if task.trainer.log_every_n_steps <= 0 or not loggers or step == task.step_state.logged_step:
        return
    parameters = [p for p in task.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = task.loss(task.full_batch())
        grads = torch.autograd.grad(loss, parameters, allow_unused=True) if loss.requires_grad else []
    loss = loss.detach()
    metrics = {"train/loss": loss, **task.distances(loss), **task.predicted(step), **learning_rates(optimizer)}
    if any(g is not None for g in grads):
        metrics["train/grad_norm"] = torch.nn.utils.get_total_norm([g for g in grads if g is not None])
    task.metric_buffer.add(step, metrics)
    task.metric_buffer.flush(loggers)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rates under LearningRateMonitor's names: lr-SGD, or lr-SGD/pg1, … per group."""
    name = f"lr-{type(optimizer).__name__}"
    groups = optimizer.param_groups
    if len(groups) == 1:
        return {name: groups[0]["lr"]}
    return {f"{name}/pg{i + 1}": group["lr"] for i, group in enumerate(groups)}


class StepState:
    """What one step tells the next ones; a plain object, because setting attributes on a
    torch Module costs more per step than the rest of descend's bookkeeping."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | None = None  # the loss at the start of the current step
        self.logged_loss: torch.Tensor | None = None  # the last logged train/loss (plateau watches it)
        self.logged_step = -1
        self.step = 0  # the step being taken, and whether it is a logging step
        self.logging = False
        self.last_logged: tuple[int, dict[str, float]] = (-1, {})  # by log_to_loggers (validation)
        self.relog: dict[str, Any] | None = None  # from a checkpoint, written again on resuming
        self.device_rng: dict[str, torch.Tensor] | None = None  # from a checkpoint, restored on the device
        self.guard: Any = None  # the divergence guard, checked at every step on the CPU (run_group)
        self.group_start: Any = None  # replay.GroupStart of the current group, where it is replayed
        self.group_batches: Sequence[Any] = ()


def lean_steps(trainer: Any, settings: StepSettings) -> bool:
    """Whether a batch's steps may skip Lightning's per-step hook dispatch.

    Lightning's backward and optimizer-step paths call every callback's on_before_backward,
    on_after_backward and on_before_optimizer_step on each step: for a 4×4 problem that is
    most of a step. They do real work only for loss scaling (16-mixed) and are the per-step
    hooks a user asks for with steps_per_batch=1; otherwise the step runs plain PyTorch,
    counted by the LightningOptimizer's step-progress hooks."""
    if settings.steps_per_batch == 1 or trainer.world_size > 1:
        return False
    return getattr(trainer.precision_plugin, "scaler", None) is None


def run_group(task: Any, group: StepGroup) -> dict[str, Any]:
    """K optimiser steps, one per batch of the group. Each is what a plain loop does:
    loss, zero_grad, backward, (clip), step, then the step-interval schedulers.

    The inner loop is kept free of per-step Lightning property lookups (global_step alone
    walks a chain of them): they cost a tenth of a 4×4 step each."""
    optimizer = task.optimizers()  # the LightningOptimizer: it counts trainer.global_step
    raw = optimizer.optimizer
    lean = lean_steps(task.trainer, task.step_settings)
    needs_closure = isinstance(raw, torch.optim.LBFGS) or not lean
    schedulers = step_schedulers_due(task, "step")
    every = task.trainer.log_every_n_steps
    state = task.step_state
    first_step = step = task.global_step
    # A signal stops the group before its next step (stopping.py). Data-parallel ranks decide
    # together after the batch instead (stopping.agreed_stop): one rank skipping a step would
    # leave the others waiting in its gradient reduction.
    single = task.trainer.world_size == 1
    stop = stopping.stop_request if single else None
    # The divergence guard at every step, on the host, before the step's update: the run then
    # stops with the state of the step whose loss went bad (DESIGN.md "Trust at a stop"). On the
    # CPU reading the loss costs about a microsecond; on a GPU it would wait for the device at
    # every step, so there the guard checks the group's losses after it (DivergenceGuard.find)
    # and replays the group up to the bad step (replay.py). The closure path (LBFGS, 16-mixed,
    # steps_per_batch=1) and DDP keep the after-group check: their state is the group's last.
    exact = single and not needs_closure and state.guard is not None
    host_checked = raw.param_groups[0]["params"][0].device.type in HOST_CHECKED
    guard = state.guard if exact and host_checked else None
    # elsewhere (a GPU) the group's start is kept, to replay up to a bad step the guard finds after it
    state.group_start = replay.GroupStart(task, raw, schedulers, first_step) if exact and not host_checked else None
    state.group_batches = group.batches
    guard_every = max(getattr(guard, "every_n_steps", 1), 1)
    # the guard's bound on |loss| (NaN fails `<=` too); before its first loss is known, every value goes to the guard
    limit = -1.0 if guard is None or guard.first_loss is None else (guard.limit() or math.inf)
    # Each step's loss goes into one tensor, written in place. Kept as a list of the steps' own
    # scalars until the group ends, each of them sat between its step's large freed temporaries
    # and kept the allocator from reusing them: lowrank 2000×2000 peaked at 2.4 GB, not 0.6 GB.
    losses: torch.Tensor | None = None
    done = 0  # steps taken (a signal or a bad loss may end the group early)
    bad: tuple[int, float] | None = None
    for batch in group.batches:
        if stop is not None and stop.signal is not None:
            break
        state.step = step
        # steps 0, N, 2N, … for N = trainer.log_every_n_steps: every curve starts at the initial loss
        state.logging = every > 0 and step % every == 0
        if needs_closure:
            evaluations: list[torch.Tensor] = []

            def closure(batch: Any = batch, evaluations: list = evaluations) -> torch.Tensor:
                loss = task.loss(batch)
                raw.zero_grad()
                evaluations.append(loss.detach())
                state.loss = evaluations[0]  # LBFGS evaluates many times: the first is the step's loss
                if lean:
                    loss.backward()
                    after_backward(task, raw)
                else:  # precision scaling, then (after unscaling) the task's on_before_optimizer_step
                    task.manual_backward(loss)
                return loss

            if lean:
                lightning_internals.counted_step(optimizer, raw.step, closure)
            else:
                optimizer.step(closure=closure)
            last = evaluations[0]
        else:  # the plain loop itself, counted by the LightningOptimizer's step-progress hooks
            loss = task.loss(batch)
            if guard is not None and step % guard_every == 0:
                value = loss.item()
                if not abs(value) <= limit and guard.is_bad(value):
                    bad = (step, value)
                    break
            raw.zero_grad()
            state.loss = loss.detach()
            loss.backward()
            after_backward(task, raw)
            lightning_internals.counted_step(optimizer, raw.step)
            last = state.loss
        if losses is None:
            losses = last.new_empty(len(group.batches))
        losses[done] = last
        done += 1
        step += 1
        for scheduler, frequency, monitor in schedulers:
            if step % frequency == 0:
                step_scheduler(task, scheduler, monitor)
    out: dict[str, Any] = {"first_step": first_step, "checked_on_host": guard is not None}
    if done:
        out.update(loss=last, losses=losses[:done])
    else:  # stopped before the group's first step
        out["losses"] = torch.empty(0)
    if bad is not None:
        out["bad_step"] = bad
    return out


def after_backward(task: Any, optimizer: torch.optim.Optimizer) -> None:
    """Between backward and update: on a logging step, the metrics at the parameters the loss
    was computed at and the gradient norm before clipping; then clipping as the Trainer would."""
    state = task.step_state
    if state.logging and state.logged_step != state.step:
        state.logged_step = state.step
        state.logged_loss = state.loss
        metrics = {"train/loss": state.loss, **task.distances(state.loss), **task.predicted(state.step), **learning_rates(optimizer)}
        grads = [p.grad for p in task.parameters() if p.grad is not None]
        if grads:
            metrics["train/grad_norm"] = torch.nn.utils.get_total_norm(grads)
        task.metric_buffer.add(state.step, metrics)
    clip_val = task.step_settings.clip_val
    if clip_val:
        task.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=task.step_settings.clip_algorithm)


def step_schedulers_due(task: Any, interval: str) -> list[tuple[Any, int, str | None]]:
    """The schedulers stepped every `interval` (step or epoch), with their frequency and monitor."""
    settings = task.scheduler_settings
    if settings.get("interval", "epoch") != interval:
        return []
    return [(config.scheduler, int(settings.get("frequency", 1)), settings.get("monitor")) for config in task.trainer.lr_scheduler_configs]


def step_scheduler(task: Any, scheduler: Any, monitor: str | None) -> None:
    """As Lightning's automatic loop would: ReduceLROnPlateau with its monitored value."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        value = task.monitored_value(monitor)
        if value is not None:  # a val/ metric before the first validation: wait for it
            scheduler.step(value)
    else:
        scheduler.step()


def step_epoch_schedulers(task: Any) -> None:
    for scheduler, frequency, monitor in step_schedulers_due(task, "epoch"):
        if (task.current_epoch + 1) % frequency == 0:
            step_scheduler(task, scheduler, monitor)


def first_bad_step(losses: torch.Tensor, limit: float | None, every: int, first_step: int) -> int | None:
    """The first step of a group whose loss is not finite or beyond `limit` in size (checked
    every `every` steps), read back from the device once; None when all are healthy."""
    steps = torch.arange(first_step, first_step + len(losses), device=losses.device)
    bad = ~torch.isfinite(losses)
    if limit is not None:
        bad |= losses.abs() > limit
    bad &= (steps % max(every, 1)) == 0
    index = int(torch.where(bad.any(), bad.int().argmax(), -1))
    return None if index < 0 else first_step + index


def random_states(task: Any) -> dict[str, torch.Tensor]:
    """torch's CPU (and CUDA) random states, one row per process, for rank 0's checkpoint."""
    states = {"cpu": torch.get_rng_state()}
    if task.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(task.device)
    if task.trainer.world_size > 1:  # a collective: every rank saves, rank 0 writes
        return {k: task.all_gather(v.to(task.device)).cpu() for k, v in states.items()}
    return {k: v.unsqueeze(0) for k, v in states.items()}


def restore_random_states(task: Any, states: dict[str, torch.Tensor], kinds: Sequence[str] = ("cpu", "cuda")) -> None:
    """This process's row of `states` (random_states) for the generators named in `kinds`; the
    CUDA state only once the module is on its GPU (it is the state of that device's generator)."""
    rank = task.trainer.global_rank
    # a copy of the row: torch reads a generator state from the start of its storage
    rows = {k: v[rank].clone() for k, v in states.items() if rank < len(v) and k in kinds}
    if "cpu" in rows:
        torch.set_rng_state(rows["cpu"].cpu())
    if "cuda" in rows and task.device.type == "cuda":
        torch.cuda.set_rng_state(rows["cuda"].cpu(), task.device)
