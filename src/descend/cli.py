"""`python -m train`: compose the config, build task and trainer, fit, test, write the results.

Exit codes of a single run: 0 completed, 1 failed (a bug: traceback in metrics.json),
2 bad input (one-line error), 3 diverged. In a multirun a job never exits: it records its
status and returns its final loss (inf unless completed), so the remaining jobs still run.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from descend.errors import ConfigError, UserError, exit_with_error
from descend.resume import resume_overrides


def config_dir() -> Path:
    """The packaged configs inside an installed wheel, else the repository's conf/ (editable install)."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


EXIT_CODES = {"completed": 0, "diverged": 3}


def main() -> None:
    sys.argv[1:] = resume_overrides(sys.argv[1:])
    check_group_choices(sys.argv[1:], config_dir())
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(run)()


def check_group_choices(argv: list[str], conf: Path) -> None:
    """`task=nope` gets one line listing the valid options (Hydra's own message is a screenful)."""
    if any(arg.startswith("hydra.searchpath=") for arg in argv):
        return  # options may come from the user's own config folders: Hydra, seeing them all, reports
    for arg in argv:
        group, sep, value = arg.lstrip("+~").partition("=")
        if not sep or "." in group or "/" in group or not (conf / group).is_dir() or group == "hydra":
            continue
        options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        for choice in value.split(","):  # a sweep over options: task=inverse,linreg
            if choice not in options and choice != "null":
                exit_with_error(f"{group}={choice} is unknown; choose one of: {', '.join(options)}")


def run(cfg: DictConfig) -> float:
    """One Hydra job: train, write metrics.json and the solution, report. Returns the final loss."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    quiet_lightning()

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    with ddp_children_join_this_job(hydra_cfg):
        record = train(cfg, run_dir, task_name=hydra_cfg.runtime.choices.get("task", "?"))
    if record is None:
        return float("nan")  # a data-parallel rank other than 0: rank 0 reports
    report(record, run_dir)
    if hydra_cfg.mode != RunMode.MULTIRUN and record["status"] != "completed":
        sys.exit(2 if record.get("user_error") else EXIT_CODES.get(record["status"], 1))
    loss = record["metrics"].get("loss")
    return float(loss) if record["status"] == "completed" and loss is not None else float("inf")


@contextmanager
def ddp_children_join_this_job(hydra_cfg: DictConfig) -> Iterator[None]:
    """Lightning starts DDP ranks 1.. by re-running this command line with `hydra.run.dir` set to
    HydraConfig's run.dir. In a multirun that would re-run the whole sweep in a new run folder;
    while this job trains, the command line is this job's overrides and run.dir its folder.
    Lightning also leaves LOCAL_RANK and friends in this process's environment, after which the
    next job would wait for ranks that an outside launcher was meant to start: they are restored."""
    import os

    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    if hydra_cfg.mode != RunMode.MULTIRUN:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")}
    saved_argv, saved_dir = sys.argv[:], hydra_cfg.run.dir
    # hparams_search would turn the child into a sweep again; its sampled values are in the overrides
    sys.argv[1:] = [o for o in hydra_cfg.overrides.task if not o.startswith("hparams_search=")]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.argv[:] = saved_argv
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = saved_dir


def train(cfg: DictConfig, run_dir: Path, task_name: str) -> dict[str, Any] | None:
    from descend.callbacks import Diverged
    from descend.results import write_metrics, write_solution

    started = time.perf_counter()
    record: dict[str, Any] = {"status": "failed", "task": task_name, "steps": 0, "metrics": {}, "error": None, "traceback": None}
    task = trainer = None
    lightning_metrics: dict[str, float] = {}  # val/ and test/ metrics, kept as each stage ends
    try:
        validate(cfg)
        import lightning.pytorch as pl
        from lightning.pytorch.utilities.model_helpers import is_overridden

        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        task = build_task(cfg)
        trainer = build_trainer(cfg)
        trainer.fit(task, ckpt_path=cfg.get("ckpt_path"))
        lightning_metrics.update(stage_metrics(trainer))
        if is_overridden("test_step", task):
            trainer.test(task, verbose=False)
            lightning_metrics.update(stage_metrics(trainer))
        record["status"] = "completed"
    except Diverged as error:
        record.update(status="diverged", error=str(error))
    except UserError as error:
        record.update(error=str(error), user_error=True)
    except Exception as error:  # a bug or an unforeseen failure: keep the traceback for the report
        record.update(error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    finally:
        close_process_group()
    record["wall_time_s"] = round(time.perf_counter() - started, 4)
    if trainer is not None and not trainer.is_global_zero:
        return None  # data-parallel ranks other than 0 leave writing and reporting to rank 0
    if trainer is not None:
        record["steps"] = trainer.global_step
    if task is not None:
        record["metrics"] = {**lightning_metrics, **final_metrics(task)}
        write_solution(run_dir, task.solution())
    write_metrics(run_dir, {k: v for k, v in record.items() if k != "user_error"})
    if trainer is not None:
        log_to_tensorboard(trainer, cfg, record)
    return record


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
    # lightning's pytree helper warns about a torch deprecation on every run; nothing a user can act on
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def close_process_group() -> None:
    """End the job's data-parallel process group: Lightning reuses an open one, and in a multirun
    the next job's new ranks could not join the old group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def validate(cfg: DictConfig) -> None:
    """Checks that no library makes before it is too late to say which key is wrong."""
    lr = cfg.optimizer.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"optimizer.lr={lr!r} must be a positive number, e.g. optimizer.lr=0.1")
    for key in ("max_steps", "log_every_n_steps"):
        value = cfg.trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"trainer.{key}={value!r} must be an integer")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise ConfigError(f"seed={cfg.seed!r} must be an integer")


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


def explain(error: BaseException) -> str:
    message = " ".join(str(error).split()) or type(error).__name__
    if "gpu backend" in message or "accelerator is not available" in message:
        return ("a GPU was asked for but torch sees none (torch.cuda.is_available() is False); "
                "use trainer.accelerator=cpu, or install a CUDA build of torch (see README)")
    if isinstance(error, TypeError) and "unexpected keyword argument" in message:
        name = message.split("'")[-2] if "'" in message else message
        return f"{name!r} is not an option here; check the spelling (python -m train --cfg job lists the options)"
    return message


def build_task(cfg: DictConfig) -> Any:
    optimizer = instantiate(cfg.optimizer, "optimizer")
    return instantiate(cfg.task, "task", optimizer=optimizer, scheduler=scheduler_config(cfg.scheduler), _convert_="all")


def scheduler_config(node: DictConfig | None) -> dict[str, Any] | None:
    """The scheduler factory plus Lightning's scheduler keys (interval, frequency, monitor)."""
    if not node or "_target_" not in node:
        return None
    config = OmegaConf.to_container(node, resolve=True)
    lightning_keys = {k: config.pop(k) for k in ("interval", "frequency", "monitor") if k in config}
    return {"factory": instantiate(config, "scheduler"), **lightning_keys}


def build_trainer(cfg: DictConfig) -> Any:
    callbacks = [instantiate(node, f"callbacks.{name}") for name, node in (cfg.get("callbacks") or {}).items() if node]
    if cfg.trainer.get("enable_progress_bar") is False:  # Lightning refuses a bar callback with the bar off
        from lightning.pytorch.callbacks import ProgressBar

        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    resumed_at = checkpoint_step(cfg.get("ckpt_path"))
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if not node:
            continue
        # A resumed run hides the events its killed predecessor logged after the checkpoint,
        # so the curve continues without a duplicated stretch (SummaryWriter's purge_step).
        tensorboard = str(node.get("_target_", "")).endswith("TensorBoardLogger")
        extra = {"purge_step": resumed_at} if resumed_at and tensorboard else {}
        loggers.append(instantiate(node, f"logger.{name}", **extra))
    return instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)


def checkpoint_step(path: str | None) -> int | None:
    """The global step a checkpoint was saved at (None without one)."""
    if not path:
        return None
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def stage_metrics(trainer: Any) -> dict[str, float]:
    """Lightning's val/ and test/ metrics at the end of a stage (the next stage resets them)."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "test/"))}


def final_metrics(task: Any) -> dict[str, float]:
    """The task's loss and distances to the closed form at its final parameters."""
    try:
        return task.final_metrics()
    except Exception:  # a failed run may have no usable parameters; its status already says so
        return {}


def log_to_tensorboard(trainer: Any, cfg: DictConfig, record: dict[str, Any]) -> None:
    """The resolved config as text, and the hyper-parameters with the final metrics (the HPARAMS tab)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        logger.experiment.add_text("config", "    " + OmegaConf.to_yaml(cfg, resolve=True).replace("\n", "\n    "))
        metrics = {f"final/{k}": (v if v is not None else float("nan")) for k, v in record["metrics"].items()}
        metrics["final/diverged"] = float(record["status"] == "diverged")
        logger.log_hyperparams(hyperparameters(cfg), metrics)
        logger.finalize("success" if record["status"] == "completed" else "failed")


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The run's choices, flattened: task, optimizer, scheduler, seed and the trainer's step budget."""
    chosen = {k: cfg[k] for k in ("task", "optimizer", "scheduler") if cfg.get(k)}
    flat: dict[str, Any] = {"seed": cfg.seed, "trainer.max_steps": cfg.trainer.get("max_steps")}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in ("_target_", "_partial_"):
                    walk(f"{prefix}.{key}", value)
        else:
            flat[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    for group, node in chosen.items():
        walk(group, OmegaConf.to_container(node, resolve=True))
    return flat


def report(record: dict[str, Any], run_dir: Path) -> None:
    """The console summary: status, final loss, distance to the closed form, where to look."""
    shown = "   ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items() if isinstance(v, float))
    print(f"\ndescend: {record['task']} {record['status']} after {record['steps']} steps in {record.get('wall_time_s', 0):.2f} s")
    if shown:
        print(f"  {shown}")
    print(f"  run folder: {run_dir}\n  tensorboard --logdir {run_dir}")
    if record["error"]:
        print(f"error: {record['error']}", file=sys.stderr)
        if record.get("traceback"):
            print(f"  (traceback in {run_dir / 'metrics.json'})", file=sys.stderr)
