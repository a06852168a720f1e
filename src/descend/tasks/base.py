"""What every task shares: optimiser and scheduler wiring, logging, distance to the closed form.

A task subclass provides, at most:
    full_batch()   the whole data set as a tuple of tensors (full-batch tasks)
    loss(batch)    the objective
    reference()    the closed-form optimum: tensors named like those of solution(),
                   plus "loss" for the optimal objective value where it is known
    solution()     the tensors worth saving
    images()       pictures for TensorBoard (optional)
    quadratic_form()  for a quadratic objective: its Hessian block and the error rows (theory.py)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from descend import stepping, stopping, theory
from descend.data.loaders import RepeatBatch
from descend.errors import ConfigError, require_int

INITS = ("rand", "randn", "zeros")
log = logging.getLogger(__name__)


def check_init(init: object) -> None:
    """task.init is one of INITS, or a ConfigError that lists them."""
    if init not in INITS:
        raise ConfigError(f"task.init={init!r} is unknown; use one of {', '.join(INITS)}")


def initial(init: str, *shape: int) -> torch.Tensor:
    """Initial parameter values; `rand` is the seed notebooks' `torch.rand` after `manual_seed`."""
    check_init(init)
    return {"rand": torch.rand, "randn": torch.randn, "zeros": torch.zeros}[init](*shape)


def flat_cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors flattened into one vector; a single one as a view, not a copy (a 2000×2000
    float64 reference is 32 MB, held for the whole run)."""
    return tensors[0].reshape(-1) if len(tensors) == 1 else torch.cat([t.reshape(-1) for t in tensors])


def follow(cached: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`cached` (a tensor, or a tuple, list or dict of them and other values) moved as `fn` moves a
    module's tensors, keeping each tensor's dtype: fn may also convert dtypes (.half(), a
    precision plugin), and a float64 reference must stay float64."""
    if isinstance(cached, torch.Tensor):
        moved = fn(cached)
        return moved if moved.dtype == cached.dtype else cached.to(moved.device)
    if isinstance(cached, dict):
        return {k: follow(v, fn) for k, v in cached.items()}
    if isinstance(cached, (tuple, list)):
        return type(cached)(follow(v, fn) for v in cached)
    return cached


class Task(pl.LightningModule):
    # Attributes holding tensors derived from the task's buffers (closed forms, caches). They are
    # not buffers (a buffer would be converted to float16 under 16-true and saved in checkpoints),
    # so _apply moves them with the module: Lightning's teardown moves a GPU run's module to the
    # CPU before the final metrics are read. A subclass adds its own caches' names.
    device_caches: tuple[str, ...] = ("_reference", "_reference_flat")
    # why theory draws no predicted curve though the update is linear (population-based training
    # changes the parameters and the learning rate mid-run: events.PopulationPBT), or None
    unpredicted: str | None = None

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Task:
        super()._apply(fn, recurse)
        for name in type(self).device_caches:
            if name in self.__dict__:
                self.__dict__[name] = follow(self.__dict__[name], fn)
        return self

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: dict[str, Any] | None = None,
        steps_per_epoch: int = 100,
        sgd_lr: float | None = None,  # the SGD learning rate conf/optimizer/sgd.yaml takes from the task
    ) -> None:
        super().__init__()
        # Collects the init args of the subclass too. logger=False: descend logs the
        # hyper-parameters once, at the end, with the final metrics (a real HPARAMS tab).
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        # the subclass's own arguments too (hparams collects them): the rules prechecks applied
        type(self).check_config(self.hparams)
        self.optimizer_factory = optimizer
        self.scheduler_config = scheduler
        self._reference: dict[str, torch.Tensor] | None = None
        self._reference_flat: tuple[torch.Tensor, torch.Tensor] | None = None
        # descend's step (stepping.py): several optimiser steps per training_step
        self.automatic_optimization = False
        self.step_settings = stepping.StepSettings()  # set from the config by build.build_task
        self.metric_buffer = stepping.MetricBuffer()
        self.step_state = stepping.StepState()
        # theory.py's numbers and prediction for a quadratic task
        self.theory: theory.RunTheory | None = None
        # a member of a population (population/) writes to loggers of its own, not the trainer's
        self.own_loggers: list[Any] | None = None
        self.stage_values: dict[str, float] = {}  # the last val/ and test/ metrics (log_stage_metrics)
        self.stop_signal: int | None = None  # a signal asked the run to stop after this batch (stopping.py)

    @classmethod
    def check_config(cls, task: Mapping[str, Any]) -> None:
        """Refuse the task's settings that are wrong whatever the data holds, with a ConfigError (or
        a DataError: a CSV's header) naming the key. `task`: the task's keys (`task.*` of the config,
        or the constructor's arguments); a key left out takes its default, which is valid.

        Called before any run folder exists (prechecks, through build.check_task: a refused command
        writes nothing) and by __init__, so each rule lives once. What needs the data read or
        drawn (a matrix's shape from its file, its condition number or symmetry) is checked as the
        task is built. A subclass extends it with its own keys."""
        if "steps_per_epoch" in task:
            require_int(task["steps_per_epoch"], "task.steps_per_epoch")
        if "init" in task:
            check_init(task["init"])

    @staticmethod
    def matrix_shape(task: Mapping[str, Any], need: str = "") -> tuple[int, int] | None:
        """The shape of the matrix `task.matrix` makes, its settings checked (MatrixConfig.shape);
        None where it is a file's (or there is none). `need`: why it must be square, if it must."""
        from descend.data.matrix import MatrixConfig, require_square

        shape = MatrixConfig(**task["matrix"]).shape() if "matrix" in task else None
        if shape is not None and need:
            require_square(shape, need)
        return shape

    @staticmethod
    def listed_matrix(task: Mapping[str, Any]) -> torch.Tensor | None:
        """The matrix where the config lists its values (task.matrix.source=diag): made in no time,
        so what a task needs of its values is checked before any run folder too; else None."""
        from descend.data.matrix import MatrixConfig, matrix_source

        config = MatrixConfig(**task["matrix"]) if "matrix" in task else None
        if config is None or config.path or config.source != "diag":
            return None
        return matrix_source(**task["matrix"])

    # ---- the task contract (overridden by subclasses) ----
    def full_batch(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def loss(self, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def reference(self) -> dict[str, torch.Tensor]:
        return {}

    def solution(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_parameters()}

    def images(self) -> dict[str, Any]:
        return {}

    def quadratic_form(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For a quadratic objective, in float64: the Hessian block H (m×m) and the error θ − θ* at
        the current parameters as rows of length m, so that loss − optimum = ½ Σ_rows e H eᵀ."""
        return None

    # ---- training: see stepping.py for how one step runs ----
    def step_plan(self) -> stepping.StepPlan:
        return stepping.StepPlan(self.trainer, self.step_settings.steps_per_batch)

    def training_batch(self) -> tuple[torch.Tensor, ...]:
        """What this process trains on: the full batch (a data-parallel task returns its shard)."""
        return self.full_batch()

    def train_dataloader(self) -> Any:
        return RepeatBatch(self.training_batch(), self.hparams.steps_per_epoch, self.step_plan())

    def training_step(self, group: stepping.StepGroup, batch_idx: int) -> dict[str, Any]:
        # no self.log here: it costs more than a batch of small steps. The progress bar reads
        # step_state; monitors get train/loss at each epoch's end (on_train_epoch_end)
        out = stepping.run_group(self, group)
        self.stop_signal = stopping.agreed_stop(self.trainer)  # read by the checkpoint callback, then below
        return out

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # called by Lightning's precision plugin after backward and unscaling (steps_per_batch=1,
        # 16-mixed); descend's lean steps call stepping.after_backward themselves
        stepping.after_backward(self, optimizer)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after the callbacks: the divergence guard writes only the steps before a blow-up
        self.metric_buffer.flush(self.writing_loggers())
        # after the checkpoint callback too, which has saved this step's state
        if self.stop_signal and not stopping.validation_follows(self.trainer):
            raise stopping.Stopped(self.global_step, self.stop_signal)

    def on_train_epoch_end(self) -> None:
        if self.stop_signal:  # a stop at the epoch's last batch, after its validation and checkpoint
            raise stopping.Stopped(self.global_step, self.stop_signal)
        # for EarlyStopping and other monitors of train/loss (self.log costs milliseconds: only then)
        watched = any(getattr(callback, "monitor", None) == "train/loss" for callback in self.trainer.callbacks)
        if watched and self.step_state.loss is not None:
            self.log("train/loss", self.step_state.loss, logger=False)
        stepping.step_epoch_schedulers(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the random state (dropout) of every process, so a resumed run draws the same numbers
        checkpoint["descend_rng"] = stepping.random_states(self)
        # what was logged at this very step outside the training steps (an epoch's validation):
        # a resumed run's TensorBoard purges the killed run's events from this step on
        step, metrics = self.step_state.last_logged
        if step == self.global_step:
            checkpoint["descend_logged_at_step"] = {"step": step, "metrics": metrics}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning loads the weights before its precision plugin converts the module (Trainer._run
        # restores, then strategy.setup converts): a 64-true checkpoint would be copied into float32
        # parameters, rounding every resumed weight (1e-8 after one step). The plugin's own
        # conversion, done first here, is the one setup would do next (and then finds done).
        try:
            self.trainer.precision_plugin.convert_module(self)
        except RuntimeError:  # not attached to a Trainer: nothing converts it later either
            pass
        if "descend_rng" in checkpoint:
            # the CPU's state now; the GPU's in on_train_start: Lightning restores the module
            # before it moves it to its device, so a CUDA state restored here would be skipped
            stepping.restore_random_states(self, checkpoint["descend_rng"], kinds=("cpu",))
            self.step_state.device_rng = checkpoint["descend_rng"]
        if "descend_logged_at_step" in checkpoint:
            self.step_state.relog = checkpoint["descend_logged_at_step"]

    def on_train_start(self) -> None:
        stopping.install()  # in place of the SIGTERM handler Lightning registered as fit started
        device_rng, self.step_state.device_rng = self.step_state.device_rng, None
        if device_rng is not None:
            stepping.restore_random_states(self, device_rng, kinds=("cuda",))
        relog, self.step_state.relog = self.step_state.relog, None
        if relog:  # what the purge took from the checkpoint's step, written again
            self.log_to_loggers(relog["metrics"], step=relog["step"])
        schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        self.start_dashboard(self.optimizers(use_pl_optimizer=False), schedulers[0] if schedulers else None)
        self.check_monitor()

    def on_train_end(self) -> None:
        # a completed run (a diverged one stops by an exception): the curves end where final/* stands
        stepping.log_last_step(self, self.optimizers(use_pl_optimizer=False))

    def start_dashboard(self, optimizer: torch.optim.Optimizer, scheduler: Any = None) -> None:
        """What TensorBoard shows of the run from its start: theory's numbers (quadratic tasks) and
        the custom-scalars page, with a chart for each curve this task logs and no empty one."""
        from descend.dashboard import write_layout

        self.start_theory(optimizer, scheduler)
        if self.writing_loggers():
            write_layout(self.writing_loggers(), self.curve_names(optimizer))

    @torch.no_grad()
    def curve_names(self, optimizer: torch.optim.Optimizer) -> list[str]:
        """The names a logging step writes (stepping.after_backward), log10 companions included:
        the distances' names are those of the task's own distances() (the loss given is a
        stand-in: only the names are kept)."""
        names = ["train/loss", "train/grad_norm", *self.distances(torch.zeros((), device=self.device)),
                 *self.predicted(self.global_step), *stepping.learning_rates(optimizer),
                 *[name for callback in self.trainer.callbacks for name in getattr(callback, "curve_names", ())]]
        return names + [stepping.log10_tag(name) for name in names if name in stepping.DECAYING]

    # ---- what theory predicts (quadratic tasks) ----
    @torch.no_grad()
    def start_theory(self, optimizer: torch.optim.Optimizer, scheduler: Any = None) -> None:
        """The Hessian's spectrum and the initial error, once, when training starts (or resumes);
        for a linear update (theory.not_linear) the predicted curve from there on."""
        form = self.quadratic_form()
        if form is None or isinstance(optimizer, torch.optim.LBFGS):
            # LBFGS's steps are quasi-Newton's: theory's step sizes say nothing of them, so no
            # theory line, theory/* scalars, metrics.json block or closing-summary line
            return
        spectrum = theory.Spectrum.of(*form)
        reason = self.unpredicted or theory.not_linear(optimizer, scheduler, self.step_settings.clip_val)
        self.theory = theory.RunTheory(spectrum, self.global_step, reason)
        if reason is None:
            settings = self.scheduler_settings
            schedule = theory.Schedule(optimizer, scheduler, self.global_step, settings.get("interval", "epoch"),
                                       int(settings.get("frequency", 1)), self.hparams.steps_per_epoch)
            self.theory.predict(schedule, form[1], self.parameter_rows(list(self.parameters())),
                                self.momentum_rows(optimizer), plain=scheduler is None)
        summary = self.theory_summary()
        # a clause a line: one long line wraps mid-word in a terminal
        log.info(self.theory.describe().replace("; ", "\n  "))
        warning = self.theory.warning()
        if warning:
            log.warning(warning)
        self.log_to_loggers({f"theory/{k}": v for k, v in summary.items()})
        for logger in self.writing_loggers():
            if hasattr(logger.experiment, "add_text"):
                logger.experiment.add_text("theory", self.theory.describe(), self.global_step)

    def parameter_rows(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Tensors laid out as the parameters, flattened in order into quadratic_form's rows (float64)."""
        width = self.theory.spectrum.eigenvalues.numel() if self.theory else 1
        return torch.cat([t.detach().double().cpu().flatten() for t in tensors]).reshape(-1, width)

    def momentum_rows(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """SGD's momentum buffers as parameter_rows (a resumed run has them), or None before its first step."""
        buffers = [optimizer.state.get(p, {}).get("momentum_buffer") for p in self.parameters()]
        return None if any(b is None for b in buffers) else self.parameter_rows(buffers)

    def theory_summary(self) -> dict[str, float]:
        """The theory's numbers for metrics.json and the sweep summary ({} for other tasks)."""
        return {} if self.theory is None else self.theory.summary

    def predicted(self, step: int) -> dict[str, float]:
        """theory/excess_loss at this step, for a linear update on a quadratic task."""
        if self.theory is None or not self.theory.predicts:
            return {}
        return {"theory/excess_loss": self.theory.excess_loss(step)}

    def monitored_value(self, key: str | None) -> torch.Tensor | None:
        """What ReduceLROnPlateau watches: the last logged train/loss, or a logged val/ metric
        (None until its first validation: the scheduler waits for it, see check_monitor)."""
        if key in (None, "train/loss"):
            state = self.step_state
            return state.logged_loss if state.logged_loss is not None else state.loss
        metrics = self.trainer.callback_metrics
        if key not in metrics and any(k.startswith("val/") for k in metrics):  # validation ran without it
            logged = ", ".join(sorted(k for k in metrics if k.startswith("val/")))
            raise ConfigError(f"scheduler.monitor={key!r} is never logged by this run; its validation logs {logged}, "
                              "or monitor train/loss")
        return metrics.get(key)

    def check_monitor(self) -> None:
        """A plateau scheduler's metric: train/loss, or a val/ metric that validation logs at each
        epoch's end (said once, as the scheduler waits until then); anything else is never logged."""
        key = self.scheduler_settings.get("monitor")
        if not self.scheduler_config or key in (None, "train/loss"):
            return
        from lightning.pytorch.utilities.model_helpers import is_overridden

        if not (key.startswith("val/") and is_overridden("validation_step", self) and self.trainer.enable_validation):
            raise ConfigError(f"scheduler.monitor={key!r} is never logged by this run; monitor train/loss"
                              + (" or a val/ metric of its validation" if is_overridden("validation_step", self) else ""))
        steps_left = getattr(self.trainer.train_dataloader, "steps_left", None)  # descend's loaders: steps to the epoch's end
        first = f" (the next at step {self.global_step + steps_left(self.global_step)})" if steps_left else ""
        log.info(f"scheduler: watches {key}, logged by validation at each epoch's end{first}; it steps once that is logged")

    def writing_loggers(self) -> list[Any]:
        """Where this task's scalars and pictures go: a population member's own loggers, else the
        trainer's on the process that writes (data-parallel rank 0)."""
        if self.own_loggers is not None:
            return self.own_loggers
        return list(self.loggers) if self.trainer.is_global_zero else []

    def log_to_loggers(self, metrics: dict[str, torch.Tensor], step: int | None = None) -> None:
        """Write scalars straight to the loggers at this step (default: the current one): the
        public logger API costs a fraction of self.log, whose bookkeeping these do not need."""
        step = self.global_step if step is None else step
        values = stepping.with_log10({k: float(v) for k, v in metrics.items()})
        self.step_state.last_logged = (step, values)
        for logger in self.writing_loggers():
            stepping.write_scalars(logger, values, step)  # TensorBoard's tags by tags.py

    def log_stage_metrics(self, values: dict[str, Any]) -> None:
        """Validation and test metrics: to the loggers at the optimiser step (Lightning's self.log
        would count batches of steps), and to Lightning for monitors and the results. Every rank
        evaluates the whole split, so the values agree; sync_dist says so to Lightning. A
        population member keeps them itself (stage_values): its population is Lightning's module."""
        if self.own_loggers is None:
            self.log_dict(values, sync_dist=True, logger=False)
        self.stage_values.update({k: float(v) for k, v in values.items()})
        self.log_to_loggers(values)

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ConfigError("no optimizer is configured; choose one with optimizer=sgd|adam|adamw|rmsprop|lbfgs")
        optimizer = self.optimizer_factory(self.parameters())
        if not self.scheduler_config:
            return optimizer
        # handed to Lightning so that checkpoints hold its state; stepped by stepping.step_schedulers
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_config["factory"](optimizer)}

    @property
    def scheduler_settings(self) -> dict[str, Any]:
        """interval (step|epoch), frequency and monitor of the scheduler, as Lightning names them."""
        return {k: v for k, v in (self.scheduler_config or {}).items() if k != "factory"}

    # ---- distance to the closed form ----
    def cached_reference(self) -> dict[str, torch.Tensor]:
        """reference() in float64, computed once: it may cost a matrix inverse or an SVD."""
        if self._reference is None:
            with torch.no_grad():
                self._reference = {k: torch.as_tensor(v).double() for k, v in self.reference().items()}
        return self._reference

    @torch.no_grad()
    def distances(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """Excess loss over the optimum, and the relative error of the solution against the closed
        form, taken over all reference tensors together (so a zero bias cannot make it blow up)."""
        reference = self.cached_reference()
        out = {}
        if "loss" in reference:
            out["ref/excess_loss"] = loss.double() - reference["loss"]
        names = [k for k in reference if k != "loss"]
        if names:
            solution = self.solution()
            flat, norm = self._flat_reference(names)
            error = flat_cat([solution[k].double() for k in names]) - flat
            out["ref/rel_error"] = torch.linalg.vector_norm(error) / norm
        return out

    def _flat_reference(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference tensors flattened into one, and its norm: computed once, used at every logging step."""
        if self._reference_flat is None:
            flat = flat_cat([self.cached_reference()[k] for k in names])
            self._reference_flat = (flat, torch.linalg.vector_norm(flat).clamp_min(1e-300))
        return self._reference_flat

    @torch.no_grad()
    def final_metrics(self) -> dict[str, float]:
        """The loss and the distances at the final parameters, after the last update."""
        loss = self.loss(self.full_batch())
        return {"loss": float(loss), **{k: float(v) for k, v in self.distances(loss).items()}}
