"""`hydra/sweeper=optuna`: an Optuna search over Optuna's ask-and-tell interface (Optuna ≥ 4).

It replaces Hydra's Optuna plugin, which pins Optuna < 3 (whose RDB storage does not work with
SQLAlchemy 2) and hides the trial object. The keys are that plugin's: sampler, direction,
study_name, storage, n_trials, n_jobs, params (Hydra's override grammar; descend.search).

The study lives in the sweep folder (Optuna's journal file) or in `storage`, a database URL; the
sampler's state is pickled beside it after each batch of asks. So `python -m train -m
resume=<sweep folder>` continues the same study: the trials told are not run again, the trials
that were running when the sweep was killed run again in their folders (continuing from their
checkpoints), and the search ends with n_trials trials in all. n_jobs trials at a time go to the
launcher as one batch (the population launcher trains them as one population).
"""


import contextlib
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.descend_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    direction: str = "minimize"  # or maximize
    study_name: Optional[str] = None  # None: "descend"; name it when several sweeps share one storage
    storage: Optional[str] = None  # None: a journal file in the sweep folder; or a database URL (README)
    n_trials: int = 20  # this sweep's trials in all, a resumed sweep's included
    n_jobs: int = 1  # trials handed to the launcher at once (a population trains them together)
    params: Optional[Dict[str, str]] = None  # key: search space, in Hydra's override grammar


# Hydra's Optuna plugin, where still installed, registers hydra/sweeper=optuna too, and the entry stored
# last wins: its config is imported first here, so that this one replaces it whichever Hydra scans first.
with contextlib.suppress(ImportError):
    import hydra_plugins.hydra_optuna_sweeper.config  # noqa: F401
ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="descend")


class OptunaSweeper(Sweeper):
    def __init__(self, sampler: Any, direction: str, study_name: str | None, storage: str | None, n_trials: int,
                 n_jobs: int, params: DictConfig | None) -> None:
        self.sampler, self.study_name, self.storage = sampler, study_name or "descend", storage
        self.direction = str(direction.name if hasattr(direction, "name") else direction)
        self.n_trials, self.n_jobs, self.params = int(n_trials), max(1, int(n_jobs)), params
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        from descend.resume_sweep import setup_sweeper

        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function, config=config)
        setup_sweeper(self)

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        from descend.search import JOURNAL, masked, open_storage, search_space, trial_overrides

        assert self.config is not None
        if self.direction not in ("minimize", "maximize"):
            refuse(f"hydra.sweeper.direction={self.direction}: choose minimize or maximize")
        space, fixed = search_space([f"{k}={v}" for k, v in (self.params or {}).items()] + list(arguments))
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # descend says what matters below
        try:  # before the sweep folder exists: a storage that cannot open leaves nothing behind
            if not self.storage:
                sweep_dir.mkdir(parents=True, exist_ok=True)
            study = optuna.create_study(study_name=self.study_name, storage=open_storage(self.storage, sweep_dir),
                                        sampler=self.restored_sampler(sweep_dir), direction=self.direction, load_if_exists=True)
        except Exception as error:  # the database is down, the URL wrong: one line, the password masked
            refuse(f"hydra.sweeper.storage={masked(self.storage)}: cannot open the study ({type(error).__name__}: "
                            f"{masked(str(error).splitlines()[0])}); check the URL and that the database is reachable")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # the command, for resume= (as Hydra's BasicSweeper saves it)
        where = masked(self.storage) if self.storage else sweep_dir / JOURNAL
        log.info(f"Optuna study {study.study_name!r} in {where}, {type(study.sampler).__name__}, {self.direction}")
        mine = self.my_trials(study, sweep_dir)
        rerun = [t for t in mine if t.state == optuna.trial.TrialState.RUNNING]  # killed mid-trial: again, in its folder
        done, next_job = len(mine) - len(rerun), 1 + max((t.user_attrs["job"] for t in mine), default=-1)
        if mine:
            log.info(f"Resuming: {done} trials told, {len(rerun)} to run again, {max(0, self.n_trials - done - len(rerun))} to ask")
        while rerun or done < self.n_trials:
            if rerun:
                batch, rerun = rerun[: self.n_jobs], rerun[self.n_jobs :]
                trials = [(t.number, t.user_attrs["job"], list(t.user_attrs["overrides"])) for t in batch]
            else:
                trials = []
                for _ in range(min(self.n_jobs, self.n_trials - done)):
                    trial = study.ask(space)
                    overrides = trial_overrides(trial.params, fixed)
                    trial.set_user_attr("sweep_dir", str(sweep_dir))
                    trial.set_user_attr("job", next_job)
                    trial.set_user_attr("overrides", overrides)
                    trials.append((trial.number, next_job, overrides))
                    next_job += 1
                self.save_sampler(study, sweep_dir)
            self.run(study, trials)
            done += len(trials)
        self.write_results(study, sweep_dir)

    def run(self, study: Any, trials: list[tuple[int, int, list[str]]]) -> None:
        """Launch the trials' jobs (consecutive job numbers in one launch each) and tell their ends;
        a job stopped by a signal is not told: its trial stays running, for resume= to run again."""
        from optuna.trial import TrialState

        from descend.resume_sweep import runs
        from descend.search import outcome

        by_job = {job: (trial, overrides) for trial, job, overrides in trials}
        for start, count in runs(sorted(by_job)):
            batch = [by_job[n][1] for n in range(start, start + count)]
            self.validate_batch_is_legal(batch)
            returns = self.launcher.launch(batch, initial_job_idx=start)
            for number, ret in zip(range(start, start + count), returns):
                state, value = outcome(*job_end(ret), direction=self.direction)
                if state != "RUNNING":
                    study.tell(by_job[number][0], value, state=TrialState[state])

    def my_trials(self, study: Any, sweep_dir: Path) -> list[Any]:
        """This sweep folder's trials, by job number (a shared study holds other machines' trials too)."""
        trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("sweep_dir") == str(sweep_dir) and "job" in t.user_attrs]
        return sorted(trials, key=lambda t: t.user_attrs["job"])

    def restored_sampler(self, sweep_dir: Path) -> Any:
        from descend.search import SAMPLER

        saved = sweep_dir / SAMPLER
        if saved.is_file():
            with saved.open("rb") as handle:
                return pickle.load(handle)  # written by this sweep (save_sampler), never from elsewhere
        return self.sampler

    def save_sampler(self, study: Any, sweep_dir: Path) -> None:
        from descend.results import replace_atomically
        from descend.search import SAMPLER

        replace_atomically(sweep_dir / SAMPLER, lambda handle: pickle.dump(study.sampler, handle))

    def write_results(self, study: Any, sweep_dir: Path) -> None:
        """optimization_results.yaml, as Hydra's plugin writes it: the best trial's params and value."""
        import optuna

        mine = [t for t in self.my_trials(study, sweep_dir) if t.state == optuna.trial.TrialState.COMPLETE]
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "n_trials": len(self.my_trials(study, sweep_dir))}
        if mine:
            pick = min if self.direction == "minimize" else max
            best = pick(mine, key=lambda t: t.value)
            results.update(best_params=dict(best.params), best_value=float(best.value), best_job=best.user_attrs["job"])
            log.info(f"Best: job {best.user_attrs['job']}, {best.params}, value {best.value:.6g}")
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")


def refuse(message: str) -> None:
    """One line and exit 2, from inside Hydra's run (whose handler would print an exception's traceback)."""
    import sys

    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def job_end(ret: Any) -> tuple[Any, str | None]:
    """A job's returned value and the status its metrics.json records (None: the job raised)."""
    from hydra.core.utils import JobStatus

    from descend.resume_sweep import job_state
    from descend.results import read_metrics

    if ret is None or ret.status != JobStatus.COMPLETED:
        return None, None
    folder = Path(str(ret.hydra_cfg.hydra.runtime.output_dir)) if ret.hydra_cfg is not None else Path(os.getcwd())
    record = read_metrics(folder) or {}
    if job_state(folder) != "done":  # stopped (a signal, Ctrl-C) or killed: not an end
        return None, "stopped"
    return ret.return_value, record.get("status")
