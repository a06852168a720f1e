"""One LightningModule training a whole population of members: one vectorised loss and backward
over the shared data, one optimiser update for every member (optimizers.py), one `Trainer.fit`.
This is what torch.func calls model ensembling (`stack_module_state` + `functional_call` under
`vmap`; https://pytorch.org/tutorials/intermediate/ensembling.html), applied to a sweep's jobs.

Each member is the task its own job would build (same seed, same initial values), kept outside
this module's children: its parameters are views into rows of this module's stacked parameters,
so everything a task does with its parameters (distances to the closed form, pictures, the
solution, theory, checkpoints) works on the member unchanged and sees the current values.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from descend import lightning_internals, stepping, stopping, theory
from descend.population.optimizers import VectorisedOptimizer
from descend.records import ScalarRecords

if TYPE_CHECKING:
    from descend.population.members import Member


class Method(nn.Module):
    """A task's method (its loss, its distances) as a module's forward, for torch.func.functional_call."""

    def __init__(self, task: nn.Module, name: str) -> None:
        super().__init__()
        self.task = task
        self.name = name

    def forward(self, *args: Any) -> Any:
        return getattr(self.task, self.name)(*args)


# a population's logged rows reach its members' event files at least this often, and at every
# checkpoint, validation, stop and end: each flush writes to every member's file (at 1024 members,
# 15 ms), where a single run writes its rows once a batch
ROWS_EVERY_S = 1.0


class Population(pl.LightningModule):
    def __init__(self, members: list[Member]) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.members = members  # a plain list: the members are not this module's children
        template = members[0].task
        self.names = [name for name, _ in template.named_parameters()]
        self.stacked = nn.ParameterList(
            nn.Parameter(torch.stack([m.task.get_parameter(name).detach() for m in members])) for name in self.names
        )
        # in lists: not children either
        self.objective = [Method(template, "loss")]
        # the distances to the closed form of every member at once, where the task keeps the base
        # class's (a stateless function of the parameters); a task's own may keep state (eigen's
        # power method), so those are measured member by member
        from descend.tasks.base import Task

        self.measure = [Method(template, "distances")] if type(template).distances is Task.distances else []
        self.step_settings = template.step_settings
        self.step_state = stepping.StepState()  # the progress bar shows the best member's loss
        self.updater: VectorisedOptimizer | None = None
        self.scheduled: dict[str, bool] = {}  # whether any member has a scheduler of that interval
        self._stopped_values: dict[int, list[torch.Tensor]] = {}
        self.guards: Any = None  # events.MemberGuards, where the guards check every step on the host
        self._vmapped: dict[tuple[str, tuple[bool, ...]], Any] = {}  # per_member's batched methods
        self._records: dict[tuple[str, ...], ScalarRecords] = {}  # record_rows' encoders, by the names logged
        self._names: tuple[Any, tuple[str, ...] | None] = (None, None)  # record_rows' names, for its members
        self._rows_written_at = time.monotonic()  # flush_rows
        self.stop_signal: int | None = None  # a signal stops every member after this batch (stopping.py)

    # ---- the members' parameters as views of ours ----
    def bind_members(self) -> None:
        """After Lightning moved and converted this module (device, 64-true), convert each member
        as Lightning converts a single run's module (its precision plugin: torchmetrics states,
        for one, keep their dtype under .double()), then give it its rows of the stacked
        parameters. The members' converted data is shared again (members.share_data)."""
        from descend.population.members import share_data

        tasks = [m.task for m in self.members]
        for index, task in enumerate(tasks):
            self.trainer.precision_plugin.convert_module(task).to(self.device)
            for name, stacked in zip(self.names, self.stacked):
                task.get_parameter(name).data = stacked.data[index]
        share_data(tasks)

    @property
    def active(self) -> list[int]:
        """The members still training: running, and not held at a step (diverged, pruned)."""
        return [i for i, m in enumerate(self.members) if m.running and i not in self._stopped_values]

    @property
    def running(self) -> list[int]:
        """The members whose job is not over yet (a member held this batch ends at its end)."""
        return [i for i, m in enumerate(self.members) if m.running]

    # ---- Lightning's hooks ----
    def train_dataloader(self) -> Any:
        # the first member's loader: members share the data and (from the config) the batch order
        return self.members[0].task.train_dataloader()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # never stepped: the LightningOptimizer around it counts the global step, and the members'
        # own optimisers (holders) keep their hyper-parameters and schedulers
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def on_fit_start(self) -> None:
        self.bind_members()
        for member in self.members:
            member.task.trainer = self.trainer  # the global step, the epoch and the device
            member.load_training_state()  # a resumed member's parameters (into its rows) and optimiser state
        self.updater = VectorisedOptimizer([m.optimizer for m in self.members], list(self.stacked))
        # the guards at every step on the host, as a single run's on the CPU (stepping.run_group)
        from descend.population.events import MemberGuards

        guards = MemberGuards(self.members)
        self.guards = guards if guards and self.device.type in stepping.HOST_CHECKED else None
        # Lightning restores the global step after this hook: the members' checkpoints say it
        self.updater.restore(next((int(m.checkpoint["global_step"]) for m in self.members if m.checkpoint), 0))
        self.scheduled = {interval: any(m.schedulers(interval) for m in self.members) for interval in ("step", "epoch")}

    def on_train_start(self) -> None:
        stopping.install()  # in place of the SIGTERM handler Lightning registered as fit started
        for member in self.members:
            member.session.start_session(self.global_step)  # its clock, and its resume if it is one
            with member.logging():
                relog, member.task.step_state.relog = member.task.step_state.relog, None
                if relog:  # a resumed member: what the purge took from its checkpoint's step, again (Task.on_train_start)
                    member.task.log_to_loggers(relog["metrics"], step=relog["step"])
                member.task.start_dashboard(member.optimizer, member.scheduler)

    def on_train_end(self) -> None:
        self.flush_rows()
        # as Task.on_train_end, for each member still running (a diverged one stopped before)
        for index in self.active:
            member = self.members[index]
            stepping.log_last_step(member.task, member.optimizer)

    def training_step(self, group: stepping.StepGroup, batch_idx: int) -> dict[str, Any]:
        optimizer = self.optimizers()  # the LightningOptimizer: it counts trainer.global_step
        every = self.trainer.log_every_n_steps
        first_step = step = self.global_step
        losses = []
        stop = stopping.stop_request  # a signal ends the group before its next step, as stepping.run_group
        bad_steps: dict[int, tuple[int, float]] = {}  # member → (step, loss) where its guard stopped it
        for batch in group.batches:
            if stop.signal is not None:
                break
            loss = self.member_losses(batch)
            grads = list(torch.autograd.grad(loss.sum(), list(self.stacked)))
            loss = loss.detach()
            if self.guards is not None:  # before the update: a bad member is held at this step's state
                for index, value in self.guards.bad_members(step, loss, lambda: self.active):
                    bad_steps[index] = (step, value)
                    self.stop(index)
            if every > 0 and step % every == 0:
                self.record_metrics(step, loss, grads)
            grads = self.clipped(grads)
            lightning_internals.counted_step(optimizer, self.updater.step, grads)
            self.hold_stopped_members()
            losses.append(loss)
            step += 1
            self.step_schedulers(step, "step")
        self.stop_signal = stop.signal  # read by the checkpoint callback, then on_train_batch_end
        if not losses:  # stopped before the group's first step
            return {"losses": self.stacked[0].new_empty(0, len(self.members)), "first_step": first_step, "bad_steps": {}}
        stacked = torch.stack(losses)  # [steps, members]
        active = self.active
        self.step_state.loss = stacked[-1][active].min() if active else stacked[-1, 0]
        return {"losses": stacked, "first_step": first_step, "bad_steps": bad_steps if self.guards is not None else None}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after the callbacks (checkpoints, the divergence guard), as Task.on_train_batch_end
        # writes a single run's rows; a validation's rows come after them, as in a single run
        validating = stopping.validation_follows(self.trainer)
        if self.stop_signal or validating or time.monotonic() - self._rows_written_at >= ROWS_EVERY_S:
            self.flush_rows()
        self.release([i for i, m in enumerate(self.members) if not m.running])  # diverged or pruned: out of the population
        # after the checkpoint callback too, which has saved every running member at this step
        if self.stop_signal and not validating:
            raise stopping.Stopped(self.global_step, self.stop_signal)

    def flush_rows(self) -> None:
        """Every member's logged rows to its loggers (its event file). A member that leaves (pruned,
        diverged) and a checkpoint flush their own first (events.py)."""
        stepping.read_back([member.task.metric_buffer for member in self.members])
        for member in self.members:
            member.task.metric_buffer.flush(member.task.writing_loggers())
        self._rows_written_at = time.monotonic()

    def on_train_epoch_end(self) -> None:
        if self.stop_signal:  # a stop at the epoch's last batch, after its validation and checkpoint
            self.flush_rows()
            raise stopping.Stopped(self.global_step, self.stop_signal)
        self.release([i for i, m in enumerate(self.members) if not m.running])  # pruned after the validation
        self.step_schedulers(self.current_epoch + 1, "epoch")

    # ---- one vectorised step ----
    def per_member(self, method: Method, *args: Any, shared: tuple[bool, ...]) -> Any:
        """A task method called for every member at its own parameters, as one vmap: each
        argument either shared by all (the batch) or one row per member (`shared` says which)."""
        from torch.func import functional_call, vmap

        batched = self._vmapped.get((method.name, shared))
        if batched is None:  # built once: building it costs a fifth of a small step
            keys = [f"task.{n}" for n in self.names]

            def one(params: tuple[torch.Tensor, ...], *args: Any) -> Any:
                return functional_call(method, dict(zip(keys, params)), args)

            batched = self._vmapped[(method.name, shared)] = vmap(one, in_dims=(0, *(None if s else 0 for s in shared)))
        return batched(tuple(self.stacked), *args)

    def member_losses(self, batch: Any) -> torch.Tensor:
        """Every member's loss at its own parameters on the shared batch: [members]."""
        return self.per_member(self.objective[0], batch, shared=(True,))

    @torch.no_grad()
    def member_distances(self, loss: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Every member's distances to the closed form at its own parameters, {name: [members]};
        None where they are measured member by member."""
        if not self.measure:
            return None
        self.measure[0].task.cached_reference()  # computed once, outside vmap: it depends on the data only
        return self.per_member(self.measure[0], loss, shared=(False,))

    def record_metrics(self, step: int, loss: torch.Tensor, grads: list[torch.Tensor]) -> None:
        """A logging step: what a single run logs (stepping.after_backward), member by member."""
        norms = member_norms(grads)
        together = self.member_distances(loss)
        active = self.active
        # On the host (the CPU) every member's numbers become Python floats at once, the values the
        # buffer's read_back would give: a tensor index per member per metric cost more than the step.
        # Elsewhere they stay device tensors, read back once per batch (a read here would wait for the device).
        if self.device.type in stepping.HOST_CHECKED:
            if together is not None and self.record_rows(step, active, loss, together, norms):
                return
            loss_values, norm_values = loss.tolist(), norms.tolist()
            together = None if together is None else {k: v.tolist() for k, v in together.items()}
        else:
            loss_values, norm_values = loss, norms
        for index in active:
            member = self.members[index]
            task, state = member.task, member.task.step_state
            state.loss = state.logged_loss = loss[index]
            distances = task.distances(loss[index]) if together is None else {k: v[index] for k, v in together.items()}
            metrics = {"train/loss": loss_values[index], **distances, **task.predicted(step),
                       **stepping.learning_rates(member.optimizer), "train/grad_norm": norm_values[index]}
            task.metric_buffer.add(step, metrics)

    def record_rows(self, step: int, active: list[int], loss: torch.Tensor, distances: dict[str, torch.Tensor],
                    norms: torch.Tensor) -> bool:
        """record_metrics on the host for members alike (the same names logged: one optimiser
        with one parameter group, theory predicting for all or none), a column per metric for all
        of them at once: the values a single run's buffer would write (its dict and with_log10's
        companions, in that order), as each member's framed TensorBoard record where TensorBoard
        alone reads its rows (records.py), else as a stepping.Row. False where the members are not
        alike, for the member-by-member path."""
        members = [self.members[i] for i in active]
        key = (len(self.members), tuple(active), tuple(distances))  # the names stay while the members do
        if self._names[0] != key:
            self._names = (key, self._row_names(members, distances))
        names = self._names[1]
        if names is None:
            return False
        rows = torch.tensor(active) if len(active) < len(self.members) else None
        def column(values: torch.Tensor) -> list[float]:
            return (values if rows is None else values.index_select(0, rows)).tolist()

        columns = [column(loss), *(column(v) for v in distances.values())]
        if "theory/excess_loss" in names:
            columns.append(theory.excess_losses([m.task.theory for m in members], step))
        columns.append([float(m.optimizer.param_groups[0]["lr"]) for m in members])
        columns.append(column(norms))
        named = dict(zip(names, columns))
        companions = [log10_column(named[tag]) for tag in stepping.LOG10_TAGS if tag in named]
        all_names = names + tuple(stepping.LOG10_TAGS[tag] for tag in stepping.LOG10_TAGS if tag in named)
        for member, value in zip(members, columns[0]):
            if member.watches_loss:  # a plateau scheduler reads the last logged loss (Task.monitored_value)
                member.task.step_state.loss = member.task.step_state.logged_loss = value
        # members without some log10 point (a value ≤ 0 or NaN: with_log10 leaves it out) log fewer names
        partial = sorted({k for column in companions if None in column for k, value in enumerate(column) if value is None})
        rest: Iterable[int] = range(len(members))
        if all(member.records_only for member in members):  # TensorBoard alone: records made all at once
            left_out = set(partial)
            whole = [k for k in range(len(members)) if k not in left_out] if partial else range(len(members))
            values = [*columns, *companions] if not partial else [[column[k] for k in whole] for column in (*columns, *companions)]
            encoder = self._records.get(all_names) or self._records.setdefault(all_names, ScalarRecords(all_names))
            for k, record in zip(whole, encoder.records(step, time.time(), np.array(values, dtype=np.float64))):
                members[k].task.metric_buffer.add_row(step, record)
            rest = partial
        for k in rest:
            values = [column[k] for column in (*columns, *companions)]
            kept = [(n, v) for n, v in zip(all_names, values) if v is not None]
            members[k].task.metric_buffer.add_row(step, stepping.Row(tuple(n for n, _ in kept), tuple(v for _, v in kept)))
        return True

    def _row_names(self, members: list[Member], distances: dict[str, torch.Tensor]) -> tuple[str, ...] | None:
        """The names every member logs at a logging step, in a single run's order; None where they differ."""
        predicting = {m.task.theory is not None and m.task.theory.predicts for m in members}
        optimizers = {(type(m.optimizer).__name__, len(m.optimizer.param_groups)) for m in members}
        if len(predicting) != 1 or len(optimizers) != 1:
            return None
        (name, groups), = optimizers
        if groups != 1:
            return None
        return ("train/loss", *distances, *(("theory/excess_loss",) if predicting.pop() else ()), f"lr-{name}", "train/grad_norm")

    def clipped(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """trainer.gradient_clip_val per member, as torch.nn.utils.clip_grad_norm_/value_ would."""
        settings = self.step_settings
        if not settings.clip_val:
            return grads
        if settings.clip_algorithm == "value":
            return [g.clamp(-settings.clip_val, settings.clip_val) for g in grads]
        total = member_norms(grads)
        coefficient = torch.clamp(settings.clip_val / (total + 1e-6), max=1.0)
        return [g * coefficient.reshape(-1, *([1] * (g.dim() - 1))) for g in grads]

    def step_schedulers(self, count: int, interval: str) -> None:
        """Each running member's scheduler of this interval, when `count` (steps or epochs done)
        is a multiple of its frequency, as stepping.run_group does for a single run."""
        if not self.scheduled[interval]:
            return
        changed = False
        for index in self.active:
            member = self.members[index]
            for scheduler, frequency, monitor in member.schedulers(interval):
                if count % frequency == 0:
                    stepping.step_scheduler(member.task, scheduler, monitor)
                    changed = True
        if changed:
            self.updater.refresh()

    # ---- members that stopped (diverged) keep their parameters ----
    def stop(self, index: int) -> None:
        """Hold member `index` at its current parameters from now on (the first call decides)."""
        if index not in self._stopped_values:
            self._stopped_values[index] = [p.detach()[index].clone() for p in self.stacked]

    def hold_stopped_members(self) -> None:
        with torch.no_grad():
            for index, values in self._stopped_values.items():
                for stacked, value in zip(self.stacked, values):
                    stacked[index] = value


    # ---- members that left (diverged, pruned): the population shrinks to the others ----
    @torch.no_grad()
    def release(self, indices: list[int]) -> None:
        """Members `indices` leave the population: each keeps its parameters as tensors of its own
        (the held ones), and the stacked parameters, the optimiser's state and the guards keep the
        other members' rows only, so that every later step computes those alone. A member's rows
        are computed independently of the others' (vmap), so the others' numbers do not move."""
        if not indices:
            return
        gone = set(indices)
        keep = [i for i in range(len(self.members)) if i not in gone]
        for index in indices:
            values = self._stopped_values.get(index) or [p.detach()[index] for p in self.stacked]
            task = self.members[index].task
            for name, value in zip(self.names, values):
                task.get_parameter(name).data = value.clone()
        rows = torch.tensor(keep, dtype=torch.long, device=self.device)
        for position, stacked in enumerate(list(self.stacked)):
            self.stacked[position] = nn.Parameter(stacked.detach().index_select(0, rows), requires_grad=stacked.requires_grad)
        self.members = [self.members[i] for i in keep]
        for index, member in enumerate(self.members):
            for name, stacked in zip(self.names, self.stacked):
                member.task.get_parameter(name).data = stacked.data[index]
        self._stopped_values = {keep.index(i): v for i, v in self._stopped_values.items() if i not in gone}
        self.updater.keep(keep, list(self.stacked))
        if self.guards is not None:
            self.guards.keep(keep)


def log10_column(values: list[float]) -> list[float | None]:
    """math.log10 of each value, None where a value has none (≤ 0, NaN), as with_log10 decides."""
    try:
        out = list(map(math.log10, values))
    except ValueError:  # a value ≤ 0
        return [math.log10(v) if v > 0 else None for v in values]
    if math.isnan(sum(out)):  # a NaN (log10 gives +inf at most, never -inf, so no inf - inf)
        return [v if v == v else None for v in out]
    return out


def member_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """Each member's total gradient norm, [members]: torch's get_total_norm of its rows."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]), dim=0)


class EvaluatedPopulation(Population):
    """A population of a task with validation and test splits (mlp): every member evaluates the
    shared batches with its own metrics, at the steps its own run would."""

    def each(self, hook: str, *args: Any) -> None:
        """Call a task hook on every running member."""
        for index in self.active:
            getattr(self.members[index].task, hook)(*args)

    def val_dataloader(self) -> Any:
        return self.members[0].task.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.members[0].task.test_dataloader()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.each("validation_step", batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.each("on_validation_epoch_end")

    def on_test_epoch_start(self) -> None:
        self.each("on_test_epoch_start")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.each("test_step", batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.each("on_test_epoch_end")


def population_of(members: list[Member]) -> Population:
    """The population module the members' task needs: with validation and test where it has them."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    evaluated = any(is_overridden(hook, members[0].task, pl.LightningModule) for hook in ("validation_step", "test_step"))
    return (EvaluatedPopulation if evaluated else Population)(members)
