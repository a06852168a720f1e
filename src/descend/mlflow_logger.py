"""MLflow tracking (`logger=mlflow`, `logger=tensorboard_mlflow`): Lightning's MLFlowLogger with
what descend's runs need from it.

- The same scalars at the same steps as TensorBoard: they reach this logger through
  `stepping.write_scalars` as every logger's do, under the metric's own name (not TensorBoard's
  group tags), with names MLflow refuses made valid in one place (`mlflow_key`).
- A run is an MLflow run named like its folder, with the flattened config as params and tags
  `task`, `status`, `run_folder` (and `sweep`); a sweep's jobs (population members included) are
  runs of an experiment named after the sweep's folder.
- No duplicated steps after a kill and a resume: MLflow cannot delete single metric points, so
  scalars and pictures are held here and sent when a checkpoint is written (descend's Checkpoint
  calls `logger.save()` just before it saves) and at the end. What a killed run logged after its
  last checkpoint never reaches MLflow; the price is that a running job's MLflow curves lag by up
  to a checkpoint interval (TensorBoard's do not). The run id is kept in the run folder
  (`mlflow.json`), so `resume=<folder>` reopens the same MLflow run, and points at steps MLflow
  already holds (the checkpoint's own step, a completed run's last step) are not sent again.
- The end of a run (`log_run_end`, called by results.write_results): `final/*` at the last step,
  `metrics.json`, the solution files and the config as artifacts, and the status.

mlflow is imported only here, and only when a run asks for this logger.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from descend.errors import UserError

log = logging.getLogger(__name__)

RUN_FILE = "mlflow.json"  # in the run folder: where its MLflow run lives, for resume=
DEFAULT_EXPERIMENT = "descend"  # single runs; a sweep's jobs go to an experiment named after the sweep
MAX_PARAM_LENGTH = 6000  # MLflow 3's limit on a param's value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH)
MAX_HELD_POINTS = 50_000  # beyond this many held points (a run without checkpoints) they are sent at once
MAX_HELD_PICTURES = 32
# descend's status -> MLflow's; a run stopped by a signal is KILLED until a resume reopens it
STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "stopped": "KILLED"}

# MLflow keys may hold letters, digits, _ - . space / (and : except on Windows). descend's names
# are valid but for linreg's `prediction@5` and the pictures' `W·M`: these read best as below.
_REPLACED = {"@": "_at_", "·": "."}
_INVALID = re.compile(r"[^/\w.\- ]")


def mlflow_key(name: str) -> str:
    """A metric, param or picture name as MLflow accepts it: `prediction@5` -> `prediction_at_5`,
    `W·M` -> `W.M`, anything else invalid -> `_`. The one place where descend's names change for MLflow."""
    for old, new in _REPLACED.items():
        name = name.replace(old, new)
    return _INVALID.sub("_", name)


def run_config(run_dir: Path) -> dict[str, str]:
    """The config a run folder's .hydra/config.yaml holds, flattened as descend.runs flattens it,
    each value as text; an interpolation resolved where it can be (inside the run, `${hydra:…}`
    too), else as written."""
    from descend.configtext import read_yaml, resolved_flat

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    flat = resolved_flat(read_yaml(path) or {})
    return {key: "null" if value is None else str(value) for key, value in flat.items()}


class MLflowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger for one descend run (see the module's docstring).

    Args:
        run_dir: the run folder: the MLflow run is named after it and keeps its id there.
        tracking_uri: where MLflow keeps runs: a local store (`sqlite:///outputs/mlflow.db`, a path
            relative to the folder the command runs in) or a team's server (`http://host:5000`).
        experiment_name: every run's experiment; default: `descend`, or a sweep's folder for its jobs.
        multirun, sweep_dir: Hydra's mode and sweep folder, which tell a sweep's job.
        resume: the folder of a run being resumed (`resume=`): its MLflow run is continued.
        task: the task's name (a tag).
        artifact_location: where a new experiment keeps artifacts; for a local store default
            `mlartifacts/` beside the database.
    """

    def __init__(self, run_dir: str, tracking_uri: str = "sqlite:///outputs/mlflow.db", experiment_name: str | None = None,
                 multirun: Any = None, sweep_dir: str | None = None, resume: str | None = None, task: str = "?",
                 artifact_location: str | None = None) -> None:
        began = time.perf_counter()
        check_available(tracking_uri)
        quiet_mlflow()
        self.run_dir = Path(run_dir)
        self.sweep = str(sweep_dir) if sweep_dir and "MULTIRUN" in str(multirun) else None
        experiment_name = experiment_name or self.sweep or DEFAULT_EXPERIMENT
        if artifact_location is None and tracking_uri.startswith("sqlite:///"):
            artifact_location = str((Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").resolve())
        run_id = previous_run_id(self.run_dir, tracking_uri) if resume else None
        tags = {"task": task, "status": "running", "run_folder": str(self.run_dir.resolve())}
        if self.sweep:
            tags["sweep"] = self.sweep
        super().__init__(experiment_name=experiment_name, run_name=self.run_dir.name, tracking_uri=tracking_uri, tags=tags,
                         artifact_location=artifact_location, run_id=run_id)
        self.resumed = run_id is not None
        self.held: list[Any] = []  # mlflow.entities.Metric, until the next checkpoint
        self.held_pictures: list[tuple[str, Any, int]] = []
        self.sent_through: dict[str, int] = {}  # a resumed run: the last step MLflow holds of each metric
        self.started = False
        # the tracker's own setup (a new database's tables, an experiment): not the run's wall time
        self.setup_s = time.perf_counter() - began

    # ---- the run ----
    @property
    def experiment(self) -> Any:
        began = time.perf_counter()
        client = super().experiment  # creates the experiment and the run, or reopens the run
        if not self.started and rank_zero_only.rank == 0:
            self.started = True  # before start(), whose calls come back here
            self.start(client)
            self.setup_s += time.perf_counter() - began
        return client

    def start(self, client: Any) -> None:
        """Once, when the run is first written to: its id into the run folder, its params; a
        resumed run is running again, and what MLflow holds of it is not sent twice."""
        (self.run_dir / RUN_FILE).write_text(json.dumps({"tracking_uri": self._tracking_uri, "run_id": self._run_id,
                                                         "experiment_id": self._experiment_id}, indent=2) + "\n")
        if self.resumed:
            run = client.get_run(self._run_id)
            client.update_run(self._run_id, status="RUNNING")
            client.set_tag(self._run_id, "status", "running")
            for key in run.data.metrics:
                self.sent_through[key] = max(m.step for m in client.get_metric_history(self._run_id, key))
            self.log_config(client, dict(run.data.params))
        else:
            self.log_config(client, {})

    def log_config(self, client: Any, logged: dict[str, str]) -> None:
        """The run's config (.hydra/config.yaml, flattened as descend.runs flattens it) as params.
        MLflow cannot change a param, so a resume that changed one (trainer.max_steps=…) says so
        in the tag `resumed_with` instead."""
        from mlflow.entities import Param

        params = {mlflow_key(k): v for k, v in run_config(self.run_dir).items()}
        long = [k for k, v in params.items() if len(v) > MAX_PARAM_LENGTH]
        for key in long:
            params[key] = params[key][:MAX_PARAM_LENGTH - 20] + " …(truncated)"
        if long:
            log.info(f"mlflow: params truncated to {MAX_PARAM_LENGTH} characters (MLflow's limit): {', '.join(long)}")
        changed = {k: v for k, v in params.items() if k in logged and logged[k] != v}
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for first in range(0, len(new), 100):  # MLflow takes at most 100 params a call
            client.log_batch(self._run_id, params=new[first:first + 100])
        if changed:
            step = max(self.sent_through.values(), default=0)
            note = "; ".join(f"{k}={v} (was {logged[k]})" for k, v in changed.items())
            client.set_tag(self._run_id, "resumed_with", f"after step {step}: {note}")

    # ---- scalars and pictures, held until a checkpoint ----
    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        step = step or 0
        now = int(time.time() * 1000)
        for name, value in metrics.items():
            key = mlflow_key(name)
            if step > self.sent_through.get(key, -1):
                self.held.append(Metric(key, float(value), now, step))
        if len(self.held) > MAX_HELD_POINTS:
            self.send()

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        pass  # the config is logged as params when the run starts (log_config); Lightning's hparams would repeat it

    @rank_zero_only
    def log_images(self, images: dict[str, Any], step: int) -> None:
        """Pictures (HWC uint8 arrays) at this step, shown in the run's Images tab. A resumed run
        that had ended (final/* sent) sent its pictures through that step: not again."""
        if step <= self.sent_through.get("final/diverged", -1):
            return
        self.held_pictures += [(mlflow_key(tag), image, step) for tag, image in images.items()]
        if len(self.held_pictures) > MAX_HELD_PICTURES:
            self.send()

    @rank_zero_only
    def save(self) -> None:
        """Called by descend's Checkpoint before it writes a checkpoint: send what was held."""
        self.send()

    def send(self) -> None:
        if not self.held and not self.held_pictures:
            return
        client = self.experiment
        held, self.held = self.held, []
        for first in range(0, len(held), 1000):  # MLflow takes at most 1000 metrics a call
            client.log_batch(self._run_id, metrics=held[first:first + 1000])
        pictures, self.held_pictures = self.held_pictures, []
        for key, image, step in pictures:
            client.log_image(self._run_id, image, key=key, step=step)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Lightning's end of fit: send what is held. The run's status is set by log_run_end, after
        the test stage and the results (a failure before them leaves it FAILED here)."""
        if not self._initialized:
            return
        self.send()
        if status == "failed":
            self.experiment.set_terminated(self._run_id, "FAILED")

    # ---- the end of a run (results.write_results) ----
    @rank_zero_only
    def log_run_end(self, run_dir: Path, record: dict[str, Any]) -> None:
        """final/* at the run's last step (as TensorBoard has them), metrics.json, the solution and
        the config as artifacts, the status as a tag and as MLflow's run status."""
        from descend import hparams

        if record["status"] != "stopped":  # a stopped run's final/* wait for its end, as TensorBoard's do
            self.log_metrics(hparams.ordered_metrics(record), step=record["steps"])
        self.send()
        client = self.experiment
        for name in ("metrics.json", "solution.pt", "solution.npz"):
            if (run_dir / name).is_file():
                client.log_artifact(self._run_id, str(run_dir / name))
        if (run_dir / ".hydra").is_dir():
            client.log_artifacts(self._run_id, str(run_dir / ".hydra"), "config")
        status = "failed" if record.get("interrupted") else record["status"]
        client.set_tag(self._run_id, "status", "interrupted" if record.get("interrupted") else status)
        if record.get("error"):
            client.set_tag(self._run_id, "error", str(record["error"]))
        client.set_terminated(self._run_id, "KILLED" if record.get("interrupted") else STATUS[status])


def previous_run_id(run_dir: Path, tracking_uri: str) -> str | None:
    """The MLflow run a resumed folder logged to, if it logged to this tracking URI."""
    try:
        saved = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if saved.get("tracking_uri") != tracking_uri:
        log.warning(f"mlflow: {run_dir / RUN_FILE} names another tracking URI ({saved.get('tracking_uri')}); "
                    "the resumed run starts a new MLflow run")
        return None
    return saved.get("run_id")


def quiet_mlflow() -> None:
    """MLflow's INFO lines (creating and migrating its database's tables) and Lightning's warning
    that a new experiment is created are the tracker's business, not the run's: not printed
    (MLflow's warnings and errors still are). mlflow sets its logger's level and handler at import."""
    import logging

    import mlflow  # noqa: F401  (configures the "mlflow" logger, which this then quiets)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.loggers.mlflow").addFilter(
        lambda record: "not found. Creating it" not in record.getMessage())


def check_available(tracking_uri: str) -> None:
    """Before any training: mlflow installed, a server at an http(s) URI answering. One line each,
    naming the fix (MLflow's own client would retry an unreachable server for minutes)."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise UserError("logger=mlflow needs the mlflow package; install it with: pip install 'descend[mlflow]'")
    if not tracking_uri.startswith(("http://", "https://")):
        if tracking_uri.startswith("sqlite:///"):
            folder = Path(tracking_uri[len("sqlite:///"):]).parent
            folder.mkdir(parents=True, exist_ok=True)
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=float(os.environ.get("DESCEND_MLFLOW_TIMEOUT", 10)))
    except urllib.error.HTTPError:
        return  # something answered (a server behind a proxy or a login): MLflow's client says more if it must
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(f"logger.mlflow.tracking_uri={tracking_uri}: no MLflow server answers there ({reason}); start one "
                        "(mlflow server --host 127.0.0.1 --port 5000) or fix the address, or leave tracking_uri at its "
                        "default local store (sqlite:///outputs/mlflow.db)") from None
