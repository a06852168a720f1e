"""`python -m train`: compose the config, build task and trainer, fit, test, write the results.

Exit codes of a single run: 0 completed, 1 failed (a bug: traceback in metrics.json),
2 bad input (one-line error), 3 diverged. In a multirun a job never exits: it records its
status and returns its final loss (inf unless completed), so the remaining jobs still run.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from descend.errors import UserError, exit_with_error
from descend.resume import resume_overrides
from descend.sweep import register_resolvers

# at import: a launcher's worker process imports this module to run a job, before Hydra resolves
# the job's folder name (hydra.sweep.subdir) there
register_resolvers()


def config_dir() -> Path:
    """The packaged configs inside an installed wheel, else the repository's conf/ (editable install)."""
    packaged = Path(__file__).parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "conf"


EXIT_CODES = {"completed": 0, "diverged": 3}


def main() -> None:
    sys.argv[1:] = resume_overrides(sys.argv[1:])
    check_group_choices(sys.argv[1:], config_dir())
    check_overrides(sys.argv[1:], config_dir())
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


def check_overrides(argv: list[str], conf: Path) -> None:
    """A misspelt key or a malformed value gets Hydra's own message as one line, exit 2.

    Only for single runs: a sweep's values (a=1,2, range(), choice()) compose job by job, so a
    sweep gets Hydra's message in full. Flags (--help, --cfg …) and hydra.* keys are Hydra's."""
    if any(a.startswith("-") or a.startswith(("hparams_search=", "hydra.searchpath=")) for a in argv):
        return
    overrides = [a for a in argv if not a.startswith("hydra.")]
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            compose("train", overrides=overrides)
    except OverrideParseException as error:
        parser = OverridesParser.create()
        culprit = next((o for o in overrides if not _parses(parser, o)), " ".join(overrides))
        exit_with_error(f"{culprit}: cannot parse this override ({_one_line(error)}); quote lists and strings, e.g. 'task.model.hidden=[64,64]'")
    except (HydraException, OmegaConfBaseException) as error:
        message = _one_line(error)
        if message.startswith("Could not override '"):  # a key the config does not have
            key = message.split("'")[1]
            culprit = next((o for o in overrides if o.split("=", 1)[0] == key), key)
            exit_with_error(_unknown_key(culprit, key, [o for o in overrides if o != culprit], conf))
        exit_with_error(message)


def _unknown_key(culprit: str, key: str, overrides: list[str], conf: Path) -> str:
    """Name the nearest existing key: Hydra's own hint (+key=value) would add the misspelt one."""
    import difflib

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            keys = _flat_keys(OmegaConf.to_container(compose("train", overrides=overrides), resolve=False))
    except Exception:  # another override is wrong too: Hydra reports that one next
        keys = []
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{culprit}: {key} is not a key of this config; {hint}(python -m train --cfg job lists every key)"


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return [prefix]
    return [k for name, value in node.items() for k in _flat_keys(value, f"{prefix}.{name}" if prefix else str(name))]


def _parses(parser: Any, override: str) -> bool:
    try:
        parser.parse_override(override)
        return True
    except Exception:
        return False


def _one_line(error: BaseException) -> str:
    """Hydra's message without its debugging lines, on one line."""
    noise = ("full_key:", "object_type", "reference_type", "Set the environment", "See https://hydra.cc")
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip() and not line.strip().startswith(noise))


def run(cfg: DictConfig) -> float:
    """One Hydra job: train, write metrics.json and the solution, report. Returns the final loss."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from descend.distributed import ddp_children_join_this_job
    from descend.results import report

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


def train(cfg: DictConfig, run_dir: Path, task_name: str) -> dict[str, Any] | None:
    from descend.build import build_task, build_trainer, validate
    from descend.callbacks import Diverged
    from descend.dashboard import log_to_tensorboard, write_layout
    from descend.distributed import close_process_group
    from descend.results import final_metrics, report, stage_metrics, write_metrics, write_solution

    started = time.perf_counter()
    record: dict[str, Any] = {"status": "failed", "task": task_name, "steps": 0, "metrics": {}, "error": None, "traceback": None}
    task = trainer = diverged = None
    lightning_metrics: dict[str, float] = {}  # val/ and test/ metrics, kept as each stage ends
    try:
        validate(cfg)
        import lightning.pytorch as pl
        from lightning.pytorch.utilities.model_helpers import is_overridden

        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        task = build_task(cfg)
        trainer = build_trainer(cfg)
        write_layout(trainer)
        trainer.fit(task, ckpt_path=cfg.get("ckpt_path"))
        lightning_metrics.update(stage_metrics(trainer))
        if is_overridden("test_step", task):
            trainer.test(task, verbose=False)
            lightning_metrics.update(stage_metrics(trainer))
        record["status"] = "completed"
    except Diverged as error:
        record.update(status="diverged", error=str(error))
        diverged = error
    except UserError as error:
        record.update(error=str(error), user_error=True)
    except Exception as error:  # a bug or an unforeseen failure: keep the traceback for the report
        record.update(error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C: Lightning shuts down, then exits
        step = trainer.global_step if trainer is not None else 0
        record.update(error=f"interrupted at step {step}; continue with: python -m train resume={run_dir}", interrupted=True)
    finally:
        close_process_group()
    record["wall_time_s"] = round(time.perf_counter() - started, 4)
    if trainer is not None and not trainer.is_global_zero:
        if record.get("traceback"):  # a bug on this rank alone: rank 0 sees only its peer vanish
            print(f"error: rank {trainer.global_rank}: {record['error']}\n{record['traceback']}", file=sys.stderr)
        return None  # data-parallel ranks other than 0 leave writing and reporting to rank 0
    if trainer is not None:
        # a batch of steps may run past the divergence before it is seen: the guard knows the step
        record["steps"] = diverged.step if diverged else trainer.global_step
    if task is not None:
        record["metrics"] = {**lightning_metrics, **final_metrics(task)}
        if diverged:  # the loss the error message names, not the one after the blow-up
            record["metrics"]["loss"] = diverged.loss
        write_solution(run_dir, task.solution())
    write_metrics(run_dir, {k: v for k, v in record.items() if k not in ("user_error", "interrupted")})
    if trainer is not None:
        log_to_tensorboard(trainer, cfg, record)
    if record.get("interrupted"):
        report(record, run_dir)
        sys.exit(130)  # as for SIGINT; in a sweep, Ctrl-C ends the sweep
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
