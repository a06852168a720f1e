"""descend's callbacks for a population: each does, member by member, what its single-run form
does for a run, at the same steps (the step planner reads the same `event_every_n_steps`)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch

from descend import lightning_internals, stepping, stopping
from descend.population import pbt, pruning
from descend.callbacks import Checkpoint, ImageLogger


class PopulationCheckpoint(Checkpoint):
    """Checkpoint's rule (multiples of every_n_train_steps, at most one per min_interval_s, always
    at the end), writing each running member's checkpoints/last.ckpt as its own run would."""

    def _save(self, trainer: pl.Trainer) -> None:
        population = trainer.lightning_module
        base = lightning_internals.dump_checkpoint(trainer)
        stepping.read_back([population.members[index].task.metric_buffer for index in population.active])
        # one member after another, in order, in this thread: a kill between two members' files leaves
        # the earlier members at this step and the later ones at the last (writer threads finished them
        # out of order, and a resumed sweep then found members at steps it did not expect)
        for index in population.active:
            member = population.members[index]
            # the curve up to this step on disk first (see Checkpoint._save)
            member.task.metric_buffer.flush(member.loggers)
            for logger in member.loggers:
                logger.save()
            member.save_checkpoint(base, population.updater.load_into(index), trainer.global_step)
        self._last_saved_at = self._last_time_checked = time.monotonic()
        self._last_global_step_saved = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save(trainer)


class MemberGuards:
    """Every member's DivergenceGuard checked at once on the host, before a step's update, as
    stepping.run_group checks a single run's on the CPU: a member whose loss went bad is held at
    that step's state (Population.stop), so its solution, final/* and ref/* are the bad step's,
    as its single run's are. One comparison of the [members] losses with the guards' bounds per
    checked step, and one host read; the members' own guards only where one went bad."""

    def __init__(self, members: list[Any]) -> None:
        self.guards = [m.guard() if m.guard() is not None and m.guard().every_n_steps >= 1 else None for m in members]
        self.limits: torch.Tensor | None = None  # each guard's bound on |loss|, inf where none; known once every first loss is
        self.watched = torch.tensor([g is not None for g in self.guards])
        everies = {g.every_n_steps for g in self.guards if g is not None}
        self.every = everies.pop() if len(everies) == 1 else 1  # different intervals: each guard's own test below

    def keep(self, rows: list[int]) -> None:
        """Only the members `rows` from now on (Population.release)."""
        self.guards = [self.guards[i] for i in rows]
        self.watched = self.watched[rows]
        if self.limits is not None:
            self.limits = self.limits[rows]

    def __bool__(self) -> bool:
        return bool(self.watched.any())

    def bad_members(self, step: int, losses: torch.Tensor, active: Callable[[], list[int]]) -> list[tuple[int, float]]:
        """The running members (indices into `losses`, [members]) whose loss at `step` stops them, with
        that loss. `active()` lists the running members: asked only where a member is flagged (a
        list of every member at every step cost as much as the guard)."""
        if step % self.every:
            return []
        if self.limits is None:  # the first check: each guard takes its first loss (DivergenceGuard.is_bad)
            values = losses.tolist()
            bad = [(i, values[i]) for i in active() if self.due(i, step) and self.guards[i].is_bad(values[i])]
            self.limits = torch.tensor([(g.limit() or math.inf) if g is not None else math.inf for g in self.guards], dtype=losses.dtype)
            return bad
        flagged = (~(losses.abs() <= self.limits) & self.watched).nonzero().flatten().tolist()  # NaN fails <= too
        if not flagged:
            return []
        values = losses.tolist()
        running = set(active())
        return [(i, values[i]) for i in flagged if i in running and self.due(i, step) and self.guards[i].is_bad(values[i])]

    def due(self, index: int, step: int) -> bool:
        return step % self.guards[index].every_n_steps == 0


class PopulationGuard(pl.Callback):
    """Each member's own DivergenceGuard on its column of the losses: a member that diverges stops
    there (its parameters are held, its error is its own) and the others train on. When none is
    left, training ends. On the CPU the population checks every step before its update
    (MemberGuards, in Population.training_step) and hands the bad steps here; elsewhere (a GPU,
    where a read per step would wait for the device) the group's losses are read once here and a
    diverged member keeps its group's last state."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings  # the members' guards carry them; kept for the config's sake

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # every member's losses of the group read back at once (one transfer from a GPU, where a
        # read per member would wait for the device each time), then each member's guard reads its column
        losses, first_step = outputs["losses"].detach().cpu(), outputs["first_step"]
        found_on_host = outputs.get("bad_steps")
        for index in pl_module.running:
            member = pl_module.members[index]
            guard = member.guard()
            if guard is None or guard.every_n_steps < 1:
                continue
            if found_on_host is not None:
                if index not in found_on_host:
                    continue
                step, loss = found_on_host[index]
                limit = guard.limit()
                found = (step, loss, limit is not None and math.isfinite(loss) and abs(loss) > limit)
                exact = True
            else:
                found = guard.find(losses[:, index], first_step) if len(losses) else None
                if found is None:
                    continue
                exact = found[0] == first_step + len(losses) - 1
            step, loss, exploded = found
            task = member.task
            task.metric_buffer.flush(member.loggers, through_step=step - 1)
            task.log_to_loggers({"train/loss": torch.tensor(loss)}, step=step)
            member.stop_diverged(guard.error(step, loss, exploded, task, [member.optimizer], check_parameters=exact))
            pl_module.stop(index)
            for images in trainer.callbacks:  # its last picture at its stop, as its own run draws one
                if isinstance(images, PopulationImages) and images.every_n_steps > 0:
                    images.draw(member, step)
        if not pl_module.active:
            trainer.should_stop = True


class PopulationImages(ImageLogger):
    """ImageLogger's schedule and time budget, drawing every running member's pictures into its
    own TensorBoard run."""

    _per_member = 0.0  # seconds a member's pictures took to draw, the last time

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int | None = None) -> None:
        start = time.perf_counter()
        drawn: dict[bytes, Any] = {}  # members at equal parameters draw one picture (a sweep's start)
        drawings = sum(self.draw(pl_module.members[index], trainer.global_step if step is None else step, drawn)
                       for index in pl_module.active)
        spent = time.perf_counter() - start
        self._spent += spent
        self._per_member = spent / max(drawings, 1)

    def _expected(self, pl_module: pl.LightningModule) -> float:
        """A drawing of every member's pictures, which would not fit the budget it starts within:
        at 1024 members one costs about a second, the budget of 50 s of training at 2%."""
        return self._per_member * len(pl_module.active)

    @staticmethod
    def draw(member: Any, step: int, drawn: dict[bytes, Any] | None = None) -> bool:
        """Member's pictures at `step` into its own loggers (a diverged member's last, as its run's
        ImageLogger.on_exception). With `drawn`, a member whose parameters equal an earlier one's
        (picture_key) takes that one's pictures and encoded summaries instead of drawing them again:
        the members of a learning-rate sweep start alike, and drawing and encoding a picture takes
        as long as a hundred of their steps. Returns whether it drew (False: it took another's)."""
        from descend.callbacks.images import add_summary, picture_loggers, png_summary
        from descend.dashboard import tensorboard_loggers

        key = picture_key(member.task) if drawn is not None else None
        new = key is None or key not in drawn
        if new:
            images = member.task.images()
            summaries = [png_summary(f"images/{tag}", picture) for tag, picture in images.items()]
            if key is not None:
                drawn[key] = images, summaries
        else:
            images, summaries = drawn[key]
        for logger in tensorboard_loggers(member.loggers):
            for summary in summaries:
                add_summary(logger.experiment, summary, step)
        for logger in picture_loggers(member.loggers):
            logger.log_images(images, step)
        return new


# past this many parameter values a picture key would cost what it saves (members.GRAIN_SIZE's order)
PICTURE_KEY_MOST_VALUES = 32768


def picture_key(task: Any) -> bytes | None:
    """What a task's pictures depend on, as bytes: its parameters' values, and which data it holds
    (a population's members share their data tensors, members.share_data); None for a large task."""
    parameters = [p.detach() for p in task.parameters()]
    if sum(p.numel() for p in parameters) > PICTURE_KEY_MOST_VALUES:
        return None
    values = b"".join(p.contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes() for p in parameters)
    layout = repr([(tuple(p.shape), p.dtype) for p in parameters] + [(b.data_ptr(), tuple(b.shape), b.dtype) for b in task.buffers()])
    return layout.encode() + values


class PopulationPruner(pl.Callback):
    """hydra.launcher.pruner's rule (pruning.py) applied at its steps to the running members.

    It acts at a signal's stop too, before the checkpoint callback (Lightning runs checkpoints
    last) saves the step: a resumed sweep starts after that step's rule (on_fit_start), so a rung
    skipped at a stop would never happen and the resumed sweep would keep other survivors."""

    def __init__(self, conf: pruning.PrunerConf) -> None:
        self.conf = conf
        self._latest: dict[int, float] = {}  # member number → its metric's latest value
        self._after_validation = False
        self._resumed_at: int | None = None  # the step a resumed sweep starts from

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # a resumed population starts from its members' checkpoints, taken after any rule at that step
        # acted (checkpoints run last); a resume at an epoch's end passes that step's batch end again
        self._resumed_at = trainer.global_step if any(m.checkpoint for m in pl_module.members) else None

    @property
    def event_every_n_steps(self) -> int:
        """Read by descend's step planner: a group of steps ends at every multiple (the rungs are some)."""
        return self.conf.min_steps if self.conf.rule == "halving" else self.conf.every_n_steps

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        first = self.first_step()
        if trainer.max_steps is not None and 0 < trainer.max_steps <= first:
            # the rule would never act: say so, rather than end "all completed" without a word
            key, hint = self.first_step_keys()
            logging.getLogger(__name__).warning(
                f"warning: hydra.launcher.{key}: its first step is {first}, not before the run's last step "
                f"(trainer.max_steps={trainer.max_steps}), so it acts on nobody; lower hydra.launcher.{key}.{hint}")

    def first_step_keys(self) -> tuple[str, str]:
        """The launcher key of this rule, and the settings that place its first step."""
        return "pruner", "min_steps" if self.conf.rule == "halving" else "min_steps or every_n_steps"

    def first_step(self) -> int:
        """The first step the rule acts at (a multiple of every_n_steps from min_steps on, for median)."""
        conf = self.conf
        if conf.rule == "halving":
            return conf.min_steps
        return -(-conf.min_steps // conf.every_n_steps) * conf.every_n_steps

    def due(self, trainer: pl.Trainer) -> bool:
        step, conf = trainer.global_step, self.conf
        if step <= 0 or (trainer.max_steps is not None and 0 <= trainer.max_steps <= step):
            return False
        if step == self._resumed_at:  # see on_fit_start: not a second time
            return False
        if conf.rule == "halving":
            return pruning.halving_rung(step, conf.min_steps, conf.eta)
        return step >= conf.min_steps and step % conf.every_n_steps == 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not len(outputs["losses"]):
            # a signal before the group's first step: no step taken, and the rule at this step acted
            # at the previous batch's end (a second act would prune or copy twice at one step)
            return
        if self.conf.metric == "train/loss":
            # the group's last step (at a stop too: the step before the stop's), one value per member
            last = outputs["losses"][-1].tolist()
            for index in pl_module.active:
                self._latest[pl_module.members[index].number] = last[index]
        if not self.due(trainer):  # due at a signal's stop too (see the class's doc)
            return
        if stopping.validation_follows(trainer):  # its validation first, as a checkpoint waits for it
            self._after_validation = True
            return
        self.act(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.conf.metric.startswith("val/"):
            for index in pl_module.active:
                _, logged = pl_module.members[index].task.step_state.last_logged
                if self.conf.metric not in logged:  # a name the task does not log: say which it does
                    names = ", ".join(sorted(k for k in logged if k.startswith("val/") and "log10_" not in k))
                    raise pruning.ConfigError(f"hydra.launcher.pruner.metric={self.conf.metric} is not logged by this task; it logs {names}")
                self._latest[pl_module.members[index].number] = float(logged[self.conf.metric])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self._after_validation:
            self.act(trainer, pl_module)
        self._after_validation = False

    def act(self, trainer: pl.Trainer, population: Any) -> None:
        """The rule at this step: the members it names stop here."""
        candidates = population.active
        members = [population.members[i] for i in candidates]
        values = [self._latest.get(m.number, math.nan) for m in members]
        numbers = [m.number for m in members]
        if self.conf.rule == "halving":
            stopped = pruning.halving_pruned(values, numbers, self.conf.eta)
        else:
            stopped = pruning.median_pruned(values, numbers)
        order = pruning.ranked(values, numbers)
        for position in stopped:
            details = {"rule": self.conf.rule, "step": trainer.global_step, "metric": self.conf.metric,
                       "value": values[position] if math.isfinite(values[position]) else None,
                       "rank": order.index(position) + 1, "of": len(members)}
            end_member(trainer, population, candidates[position], details)
        if not population.active:
            trainer.should_stop = True


class PopulationPBT(PopulationPruner):
    """hydra.launcher.pbt (pbt.py): at every `interval` steps the bottom members copy a top
    member's rows (parameters, optimiser state) and its perturbed hyper-parameters. Ranked as the
    pruner ranks (its metric's latest values); the copies are part of the step's state, so they
    happen at a signal's stop too, before the checkpoint callback (Lightning runs checkpoints
    last) saves that step."""

    def __init__(self, conf: pbt.PBTConf) -> None:
        super().__init__(conf)  # type: ignore[arg-type]
        self.generator = torch.Generator().manual_seed(int(conf.seed))

    @property
    def event_every_n_steps(self) -> int:
        return self.conf.interval

    def first_step_keys(self) -> tuple[str, str]:
        return "pbt", "interval"

    def first_step(self) -> int:
        return self.conf.interval

    def due(self, trainer: pl.Trainer) -> bool:
        step = trainer.global_step
        if step <= 0 or (trainer.max_steps is not None and 0 <= trainer.max_steps <= step):
            return False
        # a round at the step a sweep resumes from was made before its checkpoint (at a stop too)
        return step % self.conf.interval == 0 and step != self._resumed_at

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # a resumed sweep: the generator and the lineage as the members' checkpoints hold them
        # (their hyper-parameters come back with their optimisers' param_groups)
        super().on_fit_start(trainer, pl_module)
        saved = next((m.checkpoint["descend_pbt"] for m in pl_module.members if m.checkpoint and "descend_pbt" in m.checkpoint), None)
        if saved is not None:
            self.generator.set_state(saved["generator"])
        for member in pl_module.members:
            # a copy moves its parameters and lr: no constant-lr prediction or contraction (Task.start_theory)
            member.task.unpredicted = "population-based training copies parameters and changes the lr mid-run"
            if member.checkpoint and member.checkpoint.get("descend_pbt", {}).get("lineage"):  # none where it never copied, as straight
                member.record["lineage"] = list(member.checkpoint["descend_pbt"]["lineage"])
            member.saved_with = lambda member=member: {"descend_pbt": {"generator": self.generator.get_state(),
                                                                      "lineage": list(member.record.get("lineage", []))}}

    @torch.no_grad()
    def act(self, trainer: pl.Trainer, population: Any) -> None:
        """Exploit and explore: each bottom member's rows become a top member's, then its values × a factor."""
        conf, active = self.conf, population.active
        members = [population.members[i] for i in active]
        values = [self._latest.get(m.number, math.nan) for m in members]
        order = pruning.ranked(values, [m.number for m in members])
        count = max(1, int(len(order) * conf.fraction)) if len(order) >= 2 else 0
        if not count:
            return
        draws = torch.randint(count, (count,), generator=self.generator).tolist()
        factors = torch.randint(len(conf.factors), (count, len(conf.keys)), generator=self.generator).tolist()
        updater = population.updater
        for (copier, source), chosen in zip(pbt.pairs(order, conf.fraction, draws), factors):
            to, frm = active[copier], active[source]
            for stacked in population.stacked:  # in place: the members' parameters are views of these rows
                stacked.data[to] = stacked.data[frm]
            for buffers in updater.state.values():
                for buffer in buffers:
                    if buffer is not None:
                        buffer[to] = buffer[frm]
            group, their = updater.holders[to].param_groups[0], updater.holders[frm].param_groups[0]
            new = {key: pbt.perturbed(float(their[key]), conf.factors[c], conf.bounds.get(key)) for key, c in zip(conf.keys, chosen)}
            group.update(new)
            member, origin = population.members[to], population.members[frm]
            member.record.setdefault("lineage", []).append({
                "step": trainer.global_step, "copied": origin.number, "folder": origin.run_dir.name, "metric": conf.metric,
                "value": finite(values[copier]), "from_value": finite(values[source]), "values": new})
        updater.refresh()


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def end_member(trainer: pl.Trainer, population: Any, index: int, details: dict[str, Any]) -> None:
    """Member `index` stops here, pruned: its curves up to this step and their last point, its
    checkpoint at this step (where the sweep checkpoints), its record; held until the batch ends."""
    member = population.members[index]
    task = member.task
    stepping.read_back([task.metric_buffer])
    task.metric_buffer.flush(member.loggers)
    stepping.log_last_step(task, member.optimizer)
    if any(isinstance(c, PopulationCheckpoint) for c in trainer.callbacks):
        for logger in member.loggers:
            logger.save()
        base = lightning_internals.dump_checkpoint(trainer)
        member.save_checkpoint(base, population.updater.load_into(index), trainer.global_step)
    member.stop_pruned(trainer.global_step, details)
    population.stop(index)


# descend's callbacks (conf/callbacks/default.yaml) and the form each takes in a population.
# Any other callback keeps a job out of populations (grouping.py).
POPULATION_FORMS = {
    "descend.callbacks.Checkpoint": "descend.population.events.PopulationCheckpoint",
    "descend.callbacks.DivergenceGuard": "descend.population.events.PopulationGuard",
    "descend.callbacks.ImageLogger": "descend.population.events.PopulationImages",
    "descend.callbacks.StepProgressBar": "descend.callbacks.StepProgressBar",
    "descend.callbacks.Sharpness": "descend.callbacks.Sharpness",  # off (every_n_steps=0): on, a job runs alone (grouping.py)
}
