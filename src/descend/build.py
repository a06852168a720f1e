"""From the composed config to objects: the task with its optimiser and scheduler, and the Trainer
with its callbacks and loggers. Library errors become one line that names the config key."""

from __future__ import annotations

import functools
import logging
import types
from pathlib import Path
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from descend.checkpoints import checkpoint_step
from descend.errors import ConfigError, DataError, UserError, is_number, require_int

log = logging.getLogger(__name__)


def validate(cfg: DictConfig | dict[str, Any], gpu: bool = True) -> None:
    """Checks that no library makes before it is too late to say which key is wrong. `cfg`: the
    config, or its resolved plain data (configtext.resolved_data: a population member's, read
    without OmegaConf's checks of every access). `gpu=False`: not whether this machine has the GPU
    asked for (a SLURM sweep's jobs run on other machines)."""
    trainer, seed = cfg["trainer"], cfg["seed"]
    lr = cfg["optimizer"].get("lr")
    if lr != AUTO and (not is_number(lr) or not lr > 0):
        raise ConfigError(f"optimizer.lr={lr!r} must be a positive number, e.g. optimizer.lr=0.1, or auto (quadratic tasks, sgd)")
    for key in ("max_steps", "log_every_n_steps"):
        value = trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"trainer.{key}={value!r} must be an integer")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed={seed!r} must be an integer")
    require_int(cfg.get("steps_per_batch", 1), "steps_per_batch")
    if unbounded(trainer):
        raise ConfigError(unbounded(trainer))
    if gpu:
        check_gpu(trainer)
    check_loss_scaling(cfg)
    clip_algorithm = trainer.get("gradient_clip_algorithm")
    if clip_algorithm not in (None, "norm", "value"):
        raise ConfigError(f"trainer.gradient_clip_algorithm={clip_algorithm!r} is unknown; use norm or value")
    if trainer.get("accumulate_grad_batches", 1) != 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches={trainer.get('accumulate_grad_batches')!r} is not supported: every descend "
            "step is one optimiser step; use a larger task.batch_size instead"
        )


def check_files(cfg: DictConfig) -> None:
    """The task's data or matrix file, where a path is given, exists and is of a type descend
    reads (its contents are read when the task is built); MLflow is installed where a logger needs it."""
    import importlib.util

    from descend.data.files import MATRIX_SUFFIXES, existing_file

    for node in (cfg.get("logger") or {}).values():
        if node and "mlflow" in str(node.get("_target_", "")).lower() and importlib.util.find_spec("mlflow") is None:
            raise ConfigError("logger=mlflow needs the mlflow package; install it with: pip install 'descend[mlflow]'")

    for key, suffixes in (("data", (".csv",)), ("matrix", MATRIX_SUFFIXES)):
        node = cfg.task.get(key) if "task" in cfg else None
        path = node.get("path") if isinstance(node, DictConfig) else None
        if path:
            existing_file(path, f"task.{key}.path", suffixes)
    if cfg.get("ckpt_path"):  # the checkpoint to start from (resume= sets it too, to a file it has found)
        if not Path(str(cfg.ckpt_path)).expanduser().is_file():
            raise DataError(f"ckpt_path={cfg.ckpt_path}: no such file; give a checkpoint file (a run's checkpoints/last.ckpt), "
                            "or resume=<run folder>")


def check_task(cfg: DictConfig) -> None:
    """The task's own settings, by its class's check_config (tasks/base.py): the rules its
    constructor applies that need no data read, refused before any run folder exists. A task
    class without check_config (a user's own, through hydra.searchpath) is checked as it is built."""
    from hydra.utils import get_class

    target = cfg.task.get("_target_") if "task" in cfg else None
    try:
        check = getattr(get_class(str(target)), "check_config", None) if target else None
    except Exception:  # not importable: instantiate names the key as the task is built
        return
    if check is not None:
        task = OmegaConf.to_container(cfg.task, resolve=True)
        check({k: v for k, v in task.items() if k != "_target_"})


def unbounded(trainer: DictConfig) -> str:
    """The refusal of a run without an end (Lightning would train until killed, without a word); '' otherwise."""
    if trainer.get("max_steps") == -1 and trainer.get("max_epochs") == -1 and not trainer.get("max_time"):
        return ("trainer.max_steps=-1 with trainer.max_epochs=-1 trains until killed; set trainer.max_epochs=N (an epoch: "
                "task.steps_per_epoch steps, or one pass over mlp's training split) or trainer.max_steps=N")
    return ""


def check_gpu(trainer: DictConfig) -> None:
    """A GPU asked for where torch sees none: name the fix that keeps the rest of the command."""
    import torch

    accelerator = trainer.get("accelerator")
    if accelerator not in ("gpu", "cuda") or torch.cuda.is_available():
        return
    data_parallel = "ddp" in str(trainer.get("strategy"))
    fix = "trainer=ddp_cpu (data-parallel CPU processes)" if data_parallel else "trainer.accelerator=cpu"
    raise ConfigError(f"trainer.accelerator={accelerator}: {GPU_MISSING}; use {fix}, or install a CUDA build of torch (see README)")


def check_loss_scaling(cfg: DictConfig) -> None:
    """16-mixed on a GPU scales the loss with torch's GradScaler, which cannot step LBFGS (it
    evaluates the loss many times a step); Lightning refuses it at the first step with a traceback.
    On the CPU, Lightning's 16-mixed uses no scaler, and LBFGS runs."""
    import torch

    trainer = cfg["trainer"]
    precision = str(trainer.get("precision"))
    on_gpu = trainer.get("accelerator") in ("gpu", "cuda") or (trainer.get("accelerator") in (None, "auto") and torch.cuda.is_available())
    if precision in ("16-mixed", "16") and on_gpu and cfg["optimizer"].get("_target_") == "torch.optim.LBFGS":
        raise ConfigError(f"optimizer=lbfgs cannot run with trainer.precision={precision} on a GPU (loss scaling steps "
                          "each evaluation, LBFGS takes many a step); use trainer.precision=bf16-mixed or 32-true, or another optimizer")


GPU_MISSING = "a GPU was asked for but torch sees none (torch.cuda.is_available() is False)"


def instantiate(node: Any, key: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with the library's error turned into one line that names the config key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__ or error
        if isinstance(cause, UserError):
            raise cause from None
        raise UserError(f"{key}: {explain(cause)}") from None


def instantiate_alike(node: Any, key: str, made: dict[Any, Any], **kwargs: Any) -> Any:
    """instantiate(node, key, **kwargs) for a population's members, built one after another: the
    first node of a key is instantiated by Hydra as a partial (`_partial_`), and a later one whose
    settings differ from the first's only in plain values (a logger's save_dir, a checkpoint's
    dirpath: the member's folder) calls that partial with its own values. The same object, without
    Hydra's deep copy of the node and its target check for every member (a millisecond each).
    A node that is a `_partial_` itself (an optimiser's factory) gives the first one's partial
    with this node's values in its keywords, as Hydra would make it."""
    from descend.configtext import resolved_data

    data = resolved_data(node)
    plain = (str, int, float, bool, type(None))
    if not isinstance(data, dict) or not all(isinstance(v, plain) for v in data.values()):
        return instantiate(node, key, **kwargs)  # nested settings: Hydra's own conversion of them
    partial = data.get("_partial_") is True
    entry_key = ("alike", key, data.get("_target_"), partial)
    if entry_key not in made:
        made[entry_key] = instantiate(node, key, _partial_=True), data, False
    factory, first, authorized = made[entry_key]
    changed = {k: v for k, v in data.items() if k not in first or type(v) is not type(first[k]) or v != first[k]}
    if data.keys() != first.keys() or any(k.startswith("_") for k in changed):
        return instantiate(node, key, **kwargs)
    if partial:  # keywords in the node's order, as Hydra passes them, then the caller's
        return functools.partial(factory.func, *factory.args, **{**factory.keywords, **changed, **kwargs})
    try:
        if authorized:  # as the factory's call, less Hydra's target policy, which passed this target and its result
            return factory.func(*factory.args, **{**factory.keywords, **changed, **kwargs})
        made_thing = factory(**changed, **kwargs)
        # Hydra's policy checks each call of its partial (0.07 ms): the target, and a callable result.
        # Later calls differ in plain values only (above); a result that is no callable needs no more
        made[entry_key] = factory, first, not callable(made_thing) and not isinstance(made_thing, types.ModuleType)
        return made_thing
    except Exception as error:  # as Hydra's instantiate reports a target's failure: one line naming the key
        if isinstance(error, UserError):
            raise
        raise UserError(f"{key}: {explain(error)}") from None


def explain(error: BaseException) -> str:
    message = " ".join(str(error).split()) or type(error).__name__
    if "gpu backend" in message or "accelerator is not available" in message:
        return f"{GPU_MISSING}; use trainer.accelerator=cpu, or install a CUDA build of torch (see README)"
    if isinstance(error, TypeError) and "unexpected keyword argument" in message:
        name = message.split("'")[-2] if "'" in message else message
        return f"{name!r} is not an option here; check the spelling (python -m train --cfg job lists the options)"
    return message


# Lightning refuses these with manual optimisation; descend's step applies them (stepping.py)
STEP_TRAINER_KEYS = ("gradient_clip_val", "gradient_clip_algorithm")


AUTO = "auto"  # optimizer.lr=auto: theory's lr_optimal (quadratic tasks, plain SGD)


def build_task(cfg: DictConfig, made: dict[Any, Any] | None = None) -> Any:
    """The job's task (a LightningModule) with its optimiser and scheduler factories and step
    settings, drawn from the global generators as they stand (the caller seeds them). `made`:
    see new_task. Raises UserError (ConfigError, DataError) for a bad config."""
    from descend.stepping import StepSettings

    auto = cfg.optimizer.get("lr") == AUTO
    # with lr=auto the factory is built with a stand-in lr, replaced once the task knows its Hessian
    stand_in = {"lr": 1.0} if auto else {}
    optimizer = (instantiate_alike(cfg.optimizer, "optimizer", made, **stand_in) if made is not None
                 else instantiate(cfg.optimizer, "optimizer", **stand_in))
    scheduler = scheduler_config(cfg.scheduler)
    try_factories(optimizer, scheduler)
    task = new_task(cfg, optimizer, scheduler, made)
    if auto:
        task.optimizer_factory = functools.partial(optimizer, lr=optimal_lr(task, cfg))
    clip_val, clip_algorithm = (cfg.trainer.get(k) for k in STEP_TRAINER_KEYS)  # checked by validate
    task.step_settings = StepSettings(steps_per_batch=cfg.get("steps_per_batch", 100), clip_val=clip_val, clip_algorithm=clip_algorithm or "norm")
    return task


def new_task(cfg: DictConfig, optimizer: Any, scheduler: Any, made: dict[Any, Any] | None) -> Any:
    """cfg.task instantiated with these factories. With `made` (a population's members, built one
    after another), a task made before from an equal task config and seed is copied instead
    (made_once): the same task, bit for bit, for a tenth of the cost (instantiating a task walks
    its whole config, 1.6 ms a member)."""
    import json

    def make() -> Any:
        return instantiate(cfg.task, "task", optimizer=optimizer, scheduler=scheduler, _convert_="all")

    if made is None:
        return make()
    from descend.configtext import resolved_data

    key = ("task", json.dumps(resolved_data(cfg.task), sort_keys=True, default=str), cfg.get("seed"))
    task = made_once(made, key, make, generators=True)
    task.optimizer_factory, task.scheduler_config = optimizer, scheduler
    return task


def made_once(made: dict[Any, Any], key: Any, make: Callable[[], Any], generators: bool = False) -> Any:
    """make() the first time `key` comes to `made`, else a deep copy of what it made then (kept
    untouched by what the caller does with the first); with `generators`, the global generators
    are then left as that making left them (a task draws its initial values from them)."""
    import copy

    if key not in made:
        thing = make()
        made[key] = copy.deepcopy(thing), generator_states() if generators else None
        return thing
    template, states = made[key]
    if generators:
        set_generator_states(states)
    return copy.deepcopy(template)


def seed_everything(seed: int, made: dict[Any, Any] | None = None) -> None:
    """Lightning's seed_everything(seed, workers=True, verbose=False). With `made` (a population's
    members, seeded one after another), a seed equal to the last one given leaves the generators
    as that seeding left them instead of seeding again: torch.manual_seed formats the Python
    stack for each backend not started (CUDA, XPU, MTIA: their lazy seed queues, which then hold
    this same seed), about 1.5 ms a member."""
    import os

    import lightning.pytorch as pl

    last = made.get("seeded") if made is not None else None
    if last is not None and type(seed) is int and last[0] == seed:
        set_generator_states(last[1])
        os.environ["PL_GLOBAL_SEED"], os.environ["PL_SEED_WORKERS"] = str(seed), "1"  # as seed_everything sets them
        return
    pl.seed_everything(seed, workers=True, verbose=False)
    if made is not None:
        made["seeded"] = (seed, generator_states())


def generator_states() -> tuple[Any, ...]:
    """The global generators a task's making draws from: torch's, numpy's and Python's."""
    import random

    import numpy as np
    import torch

    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def set_generator_states(states: tuple[Any, ...]) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


def optimal_lr(task: Any, cfg: DictConfig) -> float:
    """Theory's lr_optimal, 2/(λmin + λmax) of the task's Hessian, for optimizer.lr=auto: the fastest
    step of plain gradient descent. Refused where no Hessian is known, or the rule is not SGD's."""
    import torch

    from descend import theory

    target = str(cfg.optimizer.get("_target_", ""))
    if target != "torch.optim.SGD":
        raise ConfigError(f"optimizer.lr=auto is theory's lr_optimal for plain gradient descent (optimizer=sgd), not for "
                          f"{target.rsplit('.', 1)[-1]}; use optimizer=sgd or give a number, e.g. optimizer.lr=0.01")
    with torch.no_grad():
        form = task.quadratic_form()
    if form is None:
        raise ConfigError(f"optimizer.lr=auto needs a quadratic task whose Hessian theory knows (inverse, linreg, "
                          f"quadratic), not {type(task).__name__}; give a number, e.g. optimizer.lr=0.01")
    spectrum = theory.Spectrum.of(*form)
    extras = [f"optimizer.{key}={cfg.optimizer.get(key)}" for key in ("momentum", "nesterov", "weight_decay")
              if cfg.optimizer.get(key)]
    if extras:  # lr_optimal is plain SGD's: with momentum (or decay) it is neither the fastest nor the stable step
        best = theory.heavy_ball_optimum(spectrum.smallest, spectrum.largest)
        raise ConfigError(f"optimizer.lr=auto is plain SGD's lr_optimal, not the best step with {' '.join(extras)}; give both "
                          f"numbers: heavy ball is fastest at optimizer.lr={best['heavy_ball_lr_optimal']:.4g} "
                          f"optimizer.momentum={best['heavy_ball_momentum_optimal']:.4g}")
    lr = spectrum.lr_optimal
    log.info(f"optimizer.lr=auto: {lr:.6g}, theory's lr_optimal 2/(λmin + λmax) for this task's Hessian")
    return lr


def try_factories(optimizer: Any, scheduler: dict[str, Any] | None) -> None:
    """Build a throwaway optimiser and scheduler now: a wrong argument then fails before training,
    named as a config error, rather than inside Trainer.fit."""
    import torch

    try:
        throwaway = optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as error:
        raise UserError(f"optimizer: {explain(error)}") from None
    if scheduler:
        try:
            scheduler["factory"](throwaway)
        except (TypeError, ValueError) as error:
            raise UserError(f"scheduler: {explain(error)}") from None


def scheduler_config(node: DictConfig | None) -> dict[str, Any] | None:
    """The scheduler factory plus Lightning's scheduler keys (interval, frequency, monitor)."""
    if not node or "_target_" not in node:
        return None
    config = OmegaConf.to_container(node, resolve=True)
    lightning_keys = {k: config.pop(k) for k in ("interval", "frequency", "monitor") if k in config}
    return {"factory": instantiate(config, "scheduler"), **lightning_keys}


def build_trainer(cfg: DictConfig, overrides: list[str] | None = None) -> Any:
    """The Trainer with the configured callbacks and loggers, plus descend's record of the run's
    sessions (callbacks.Sessions: not optional, it is what makes a resume apply its overrides)."""
    from descend.callbacks import Sessions

    callbacks = [instantiate(node, f"callbacks.{name}") for name, node in (cfg.get("callbacks") or {}).items() if node]
    callbacks.append(Sessions(overrides))
    resumed_at = checkpoint_step(cfg.get("ckpt_path"))
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if not node:
            continue
        # A resumed run hides the events its killed predecessor logged after the checkpoint,
        # so the curve continues without a duplicated stretch (SummaryWriter's purge_step;
        # descend's CSVLogger does the same for its rows)
        target = str(node.get("_target_", ""))
        purges = target.endswith("TensorBoardLogger") or target == "descend.loggers.CSVLogger"
        extra = {"purge_step": resumed_at} if resumed_at and purges else {}
        loggers.append(instantiate(node, f"logger.{name}", **extra))
    return trainer_with(cfg, callbacks, logger=loggers or False)


def trainer_with(cfg: DictConfig, callbacks: list[Any], **arguments: Any) -> Any:
    """The Trainer of `cfg.trainer` with these callbacks: without a progress bar where the bar is
    off (Lightning refuses one then), and without the clipping keys descend's step applies."""
    from lightning.pytorch.callbacks import ProgressBar

    if cfg.trainer.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    elif not any(isinstance(c, ProgressBar) for c in callbacks):
        # one bar whatever the callbacks (callbacks=none): the run's steps, not Lightning's `Epoch 0: 1/100`
        from descend.callbacks import StepProgressBar

        callbacks = [*callbacks, StepProgressBar()]
    if cfg.trainer.get("enable_checkpointing") is None and "enable_checkpointing" not in arguments:
        # one checkpoint scheme: checkpoints/last.ckpt of callbacks.checkpoint, or none at all, never
        # Lightning's default epoch=…-step=….ckpt in its place (callbacks=none, ~callbacks.checkpoint)
        from lightning.pytorch.callbacks import ModelCheckpoint

        arguments["enable_checkpointing"] = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    no_clipping = dict.fromkeys(STEP_TRAINER_KEYS)
    return instantiate(cfg.trainer, "trainer", callbacks=callbacks, **arguments, **no_clipping, **slurm_plugins(cfg))


def slurm_plugins(cfg: DictConfig) -> dict[str, Any]:
    """Under SLURM, Lightning's SLURM environment without its auto-requeue: that path answers
    SIGUSR1 with an hpc_ckpt_N.ckpt of its own and restores it silently when the job restarts in
    the same folder, without descend's purge of the killed stretch (the curve then holds a
    stretch twice). descend's stop (stopping.py) writes last.ckpt at the step instead, and the
    requeued command resumes it with resume=auto (README "Resuming")."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if cfg.trainer.get("plugins") is not None or not SLURMEnvironment.detect():
        return {}
    return {"plugins": [SLURMEnvironment(auto_requeue=False)]}
