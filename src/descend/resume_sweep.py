"""`python -m train -m resume=<sweep folder>`: continue an interrupted sweep in its own folder.

Hydra cannot resume a multirun (job numbers restart, nothing records which jobs finished). descend
re-runs the sweep's own command (its overrides, from the multirun.yaml Hydra's sweepers save at the
sweep's root) into the same folder, with `+hydra.job.env_set.DESCEND_RESUME_SWEEP=1` (in the sweep's
config, so recorded in each job's hydra.yaml, and no state left in the calling process), and its
sweepers wrap the launcher (ResumingLauncher) so that each job, by what its folder holds:

    finished: metrics.json completed, diverged, or failed for a reason of its own  →  kept, untouched
    stopped or killed (status stopped, an interrupted failure, no metrics.json)
        with checkpoints/last.ckpt                                                →  continues from it
        without (killed before its first checkpoint)                              →  starts over
    no folder                                                                     →  runs

Jobs keep their numbers, so they get the folder names they would have had. The setting travels
with each job's config to wherever its launcher runs it (joblib's workers, SLURM jobs), where
cli.train picks up the job folder's checkpoint (sweep_checkpoint).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from descend.errors import exit_with_error

RESUMING = "DESCEND_RESUME_SWEEP"
FLAG = f"+hydra.job.env_set.{RESUMING}="
SAVED = "multirun.yaml"
# descend's sweepers, which wrap their launcher in a ResumingLauncher
RESUMABLE = ("hydra_plugins.descend_basic_sweeper.", "hydra_plugins.descend_optuna_sweeper.")

log = logging.getLogger(__name__)


def is_sweep_folder(folder: Path) -> bool:
    return (folder / SAVED).is_file() and not (folder / ".hydra").is_dir()


def sweep_resume_overrides(folder: Path, rest: list[str]) -> list[str]:
    """The sweep's own command line, into its own folder. Only the launcher may change (a job's folder
    is the same whichever launcher runs it); any other override would change the jobs: refused."""
    from omegaconf import OmegaConf

    from descend.resume import quoted

    others = [a for a in rest if a not in ("-m", "--multirun") and not a.startswith(("hydra/launcher=", "hydra.launcher."))]
    if others:
        exit_with_error(f"resume={folder}: a sweep resumes with the overrides it started with; drop {' '.join(others)} "
                        "(only hydra/launcher= and hydra.launcher.* may change)")
    saved = OmegaConf.load(folder / SAVED)
    sweeper = str(OmegaConf.select(saved, "hydra.sweeper._target_", default=""))
    if sweeper and not sweeper.startswith(RESUMABLE):  # another sweeper would run every job again, over the finished ones
        exit_with_error(f"resume={folder}: this sweep ran with {sweeper}, which descend cannot resume; "
                        "only its basic and Optuna sweepers can")
    from descend.search import PASSWORD_ENV

    needs = [o for o in saved.hydra.overrides.hydra if f"oc.env:{PASSWORD_ENV}" in o]
    if needs and PASSWORD_ENV not in os.environ:
        exit_with_error(f"resume={folder}: its Optuna storage reads its password from {PASSWORD_ENV}, which is not set; "
                        f"export {PASSWORD_ENV}=… and resume again")
    launcher = [a for a in rest if a.startswith("hydra/launcher=")]
    hydra_overrides = [o for o in saved.hydra.overrides.hydra if not o.startswith(("hydra.sweep.dir=", FLAG))
                       and not (launcher and o.startswith("hydra/launcher="))]
    return ["-m", *hydra_overrides, *saved.hydra.overrides.task, *[a for a in rest if a not in ("-m", "--multirun")],
            f"hydra.sweep.dir={quoted(folder.resolve())}", f"{FLAG}1"]


def resuming(hydra: Any) -> bool:
    """Whether this config (its `hydra` node) is a resumed sweep's."""
    return str((hydra.job.get("env_set") or {}).get(RESUMING, "")) == "1"


def job_state(folder: Path) -> str:
    """"done", "resume" (from its last.ckpt) or "start" (nothing there, or nothing worth keeping)."""
    from descend.results import read_metrics

    record = read_metrics(folder) if folder.is_dir() else None
    stopped = record is None or record.get("status") == "stopped" or str(record.get("error") or "").startswith("interrupted")
    if record is not None and not stopped:
        return "done"
    return "resume" if (folder / "checkpoints" / "last.ckpt").is_file() else "start"


def sweep_checkpoint(hydra: Any, run_dir: Path) -> str | None:
    """In a resumed sweep (`hydra`: the job's Hydra config), the checkpoint this job continues from
    (the launcher runs unfinished jobs only)."""
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    return str(checkpoint) if resuming(hydra) and checkpoint.is_file() else None


def job_folder(config: Any) -> Path:
    """A composed job config's folder, as Hydra's run_job names it."""
    return Path(os.path.abspath(os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir))))


def runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Consecutive stretches of job numbers as (start, count): a launcher numbers a batch from its first job."""
    out: list[tuple[int, int]] = []
    for n in numbers:
        if out and out[-1][0] + out[-1][1] == n:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((n, 1))
    return out


class ResumingLauncher:
    """Wraps a sweep's launcher: finished jobs are kept (a JobReturn read from their metrics.json),
    the rest are launched so that each keeps its number: all at once by a launcher that takes
    their numbers (PopulationLauncher.launch_numbered: members that stopped together train
    together again, and a pruner ranks them as it did), else in stretches of consecutive numbers."""

    def __init__(self, launcher: Any, config: Any, config_loader: Any) -> None:
        self.launcher, self.config, self.config_loader = launcher, config, config_loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.launcher, name)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        from omegaconf import open_dict

        kept: dict[int, Any] = {}
        todo: list[int] = []
        for number, overrides in enumerate(job_overrides, initial_job_idx):
            config = self.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = number
            folder = job_folder(config)
            state = job_state(folder)
            if state == "done":
                kept[number] = kept_return(config, folder, overrides)
                print(f"resume: job {number} finished before: kept ({folder.name})")
                continue
            if state == "start" and folder.exists():
                shutil.rmtree(folder)  # stopped before its first checkpoint: nothing to continue from
            print(f"resume: job {number} {'continues from its checkpoint' if state == 'resume' else 'runs'} ({folder.name})")
            todo.append(number)
        launched: dict[int, Any] = {}
        if hasattr(self.launcher, "launch_numbered"):  # the population launcher: the jobs stopped together train together
            if todo:
                launched.update(zip(todo, self.launcher.launch_numbered([job_overrides[n - initial_job_idx] for n in todo], todo)))
        else:
            for start, count in runs(todo):
                batch = [job_overrides[n - initial_job_idx] for n in range(start, start + count)]
                for offset, ret in enumerate(self.launcher.launch(batch, initial_job_idx=start)):
                    launched[start + offset] = ret
        return [kept.get(n, launched.get(n)) for n in range(initial_job_idx, initial_job_idx + len(job_overrides))]


def kept_return(config: Any, folder: Path, overrides: Sequence[str]) -> Any:
    """A finished job's JobReturn as its launcher returned it: cli.run's value (the final loss when
    completed, else inf), read back from its metrics.json."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf, open_dict, read_write

    from descend.results import read_metrics

    record = read_metrics(folder) or {}
    loss = (record.get("metrics") or {}).get("loss")
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret.return_value = float(loss) if record.get("status") == "completed" and loss is not None else float("inf")
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(folder)
    ret.hydra_cfg = OmegaConf.masked_copy(config, "hydra")
    ret.working_dir = os.getcwd()
    return ret


# the folder of the sweep running in this process, for the resume= line when it is stopped (cli.main)
current_sweep: list[Path] = []


def setup_sweeper(sweeper: Any) -> None:
    """What descend's sweepers add to their setup: the sweep's folder remembered, and in a resumed
    sweep the launcher wrapped in a ResumingLauncher."""
    current_sweep[:] = [Path(str(sweeper.config.hydra.sweep.dir)).resolve()]
    if resuming(sweeper.config.hydra) and not isinstance(sweeper.launcher, ResumingLauncher):
        sweeper.launcher = ResumingLauncher(sweeper.launcher, sweeper.config, sweeper.hydra_context.config_loader)
