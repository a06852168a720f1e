"""logger=mlflow against a real `mlflow server` (SQLite backend, artifacts in tmp) started here:
a sweep's jobs as runs of one experiment with their params, final metrics and status, the same
steps as TensorBoard, and a resumed run (stopped, or killed after a checkpoint) as one history
without duplicate steps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from conftest import QUIET, metrics, one_line_error, only_run, run_cli, scalars

pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 at a free port, SQLite backend and artifact store in tmp; its URL.
    Stopped (its process group) when the module's tests end."""
    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                os.killpg(server.pid, signal.SIGKILL)
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    log.close()


def client(url: str):
    from mlflow import MlflowClient

    return MlflowClient(url)


def runs_of(url: str, experiment_name: str) -> list:
    experiment = client(url).get_experiment_by_name(experiment_name)
    assert experiment is not None, experiment_name
    return client(url).search_runs([experiment.experiment_id], max_results=100)


def history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(url).get_metric_history(run_id, key))


def mlflow_run_id(folder: Path) -> str:
    return json.loads((folder / "mlflow.json").read_text())["run_id"]


def sweep_root(cwd: Path) -> Path:
    (root,) = (cwd / "outputs" / "multirun").glob("*/*")
    return root


def assert_job_is_its_run(url: str, job: Path, run) -> None:
    """One job's MLflow run: named like its folder, its params, final metrics, status and task, and
    every TensorBoard curve with the same steps and values (log10 companions and final/* included)."""
    record = metrics(job)
    assert run.info.run_name == job.name
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert run.data.tags["task"] == "inverse"
    assert float(run.data.params["optimizer.lr"]) == float(job.name.split("=")[1])
    assert run.data.params["trainer.max_steps"] == "40"
    assert run.data.metrics["final/loss"] == pytest.approx(record["metrics"]["loss"], rel=1e-6)
    board = scalars(job)
    assert "train/log10_loss" in board and "final/loss" in board
    for name, series in board.items():
        got = history(url, run.info.run_id, name)
        assert [s for s, _ in got] == sorted(series), name  # each step once, TensorBoard's steps
        assert [v for _, v in got] == pytest.approx([series[s] for s in sorted(series)], rel=1e-6, nan_ok=True), name
    artifacts = {a.path for a in client(url).list_artifacts(run.info.run_id)}
    assert {"metrics.json", "solution.pt", "solution.npz", "config"} <= artifacts
    assert client(url).list_artifacts(run.info.run_id, "images"), "no pictures"


@pytest.mark.parametrize("launcher", ["basic", "population"])
def test_a_sweep_is_one_experiment_with_a_run_per_job(mlflow_server, tmp_path, launcher):
    run_cli("-m", "optimizer.lr=0.1,0.46", "trainer.max_steps=40", "logger=tensorboard_mlflow",
            f"logger.mlflow.tracking_uri={mlflow_server}", f"hydra/launcher={launcher}", *QUIET, cwd=tmp_path)
    root = sweep_root(tmp_path)
    runs = {run.info.run_name: run for run in runs_of(mlflow_server, str(root.relative_to(tmp_path)))}
    jobs = sorted(p for p in root.iterdir() if (p / "metrics.json").is_file())
    assert sorted(runs) == [job.name for job in jobs] == ["00_optimizer.lr=0.1", "01_optimizer.lr=0.46"]
    for job in jobs:
        assert_job_is_its_run(mlflow_server, job, runs[job.name])
        assert runs[job.name].data.tags["sweep"] == str(root.relative_to(tmp_path))


def test_a_run_resumed_with_more_steps_continues_its_mlflow_run(mlflow_server, tmp_path):
    # the first session ends on a picture's step (every 100): the resumed one draws step 100 again
    run_cli("trainer.max_steps=100", "logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_server}", *QUIET, cwd=tmp_path)
    folder = only_run(tmp_path)
    first = mlflow_run_id(folder)
    run_cli(f"resume={folder}", "trainer.max_steps=150", *QUIET, cwd=tmp_path)
    assert mlflow_run_id(folder) == first
    run = client(mlflow_server).get_run(first)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert [s for s, _ in history(mlflow_server, first, "train/loss")] == [*range(0, 150, 10), 150]
    assert [s for s, _ in history(mlflow_server, first, "final/loss")] == [100, 150]
    assert run.data.metrics["final/loss"] == pytest.approx(metrics(folder)["metrics"]["loss"], rel=1e-6)
    assert run.data.params["trainer.max_steps"] == "100"  # MLflow keeps a param; the change is a tag
    assert "trainer.max_steps=150 (was 100)" in run.data.tags["resumed_with"]
    pictures = [a.path for a in client(mlflow_server).list_artifacts(first, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in pictures) == [0, 100, 150]


STEPS = 20000  # long enough to be killed mid-run; a checkpoint at every multiple of 100 steps
KILLED = ["task.matrix.source=random", "task.matrix.rows=6", "optimizer=momentum", "optimizer.lr=0.2", f"trainer.max_steps={STEPS}",
          "callbacks.checkpoint.every_n_train_steps=100", "callbacks.checkpoint.min_interval_s=0", *QUIET]


def checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # not written yet
        return -1


def test_a_run_killed_after_a_checkpoint_resumes_one_history_without_duplicate_steps(mlflow_server, tmp_path):
    command = [*KILLED, "logger=tensorboard_mlflow", f"logger.mlflow.tracking_uri={mlflow_server}"]
    proc = subprocess.Popen([sys.executable, "-m", "train", *command], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        found = list((tmp_path / "outputs" / "runs").glob("*/*/checkpoints/last.ckpt"))
        if found and checkpoint_step(found[0]) >= 300:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    folder = only_run(tmp_path)
    killed_at = checkpoint_step(folder / "checkpoints" / "last.ckpt")
    run_id = mlflow_run_id(folder)
    sent = [s for s, _ in history(mlflow_server, run_id, "train/loss")]
    assert sent and max(sent) < killed_at + 100  # at most what the next checkpoint would have sent
    assert client(mlflow_server).get_run(run_id).data.tags["status"] == "running"

    run_cli(f"resume={folder}", cwd=tmp_path)
    assert mlflow_run_id(folder) == run_id
    run = client(mlflow_server).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    steps = [s for s, _ in history(mlflow_server, run_id, "train/loss")]
    assert steps == [*range(0, STEPS, 10), STEPS]  # each step once
    board = scalars(folder)["train/loss"]
    assert [v for _, v in history(mlflow_server, run_id, "train/loss")] == pytest.approx([board[s] for s in steps], rel=1e-6)


def test_an_unreachable_tracking_uri_is_one_line_before_training(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free: nothing listens there
    proc = run_cli("logger=mlflow", f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}", *QUIET, cwd=tmp_path, expect=2)
    line = one_line_error(proc)
    assert f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}" in line and "mlflow server" in line
    assert metrics(only_run(tmp_path))["steps"] == 0


def test_mlflow_is_not_imported_without_logger_mlflow(tmp_path):
    code = ("import sys, descend; descend.train('trainer.max_steps=5', quiet=True); "
            "print('imported' if 'mlflow' in sys.modules else 'not imported')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "not imported"


def test_names_mlflow_refuses_are_made_valid_in_one_place():
    from mlflow.utils.validation import validate_param_and_metric_name

    from descend.mlflow_logger import mlflow_key

    assert mlflow_key("prediction@5") == "prediction_at_5"
    assert mlflow_key("images/W·M") == "images/W.M"
    assert mlflow_key("train/log10_loss") == "train/log10_loss"
    assert mlflow_key("lr-SGD/pg1") == "lr-SGD/pg1"
    for name in ("prediction@5", "images/W·M", "a:b", "x<y>"):
        assert validate_param_and_metric_name(mlflow_key(name)), name


def test_scalars_reach_mlflow_at_a_checkpoint_or_the_end_not_before(tmp_path):
    """What a killed run logged after its last checkpoint must never reach MLflow: points are held
    until save() (descend's Checkpoint calls it before writing) or finalize()."""
    from descend.mlflow_logger import MLflowLogger

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLflowLogger(run_dir=str(run_dir), tracking_uri=uri)
    logger.log_metrics({"train/loss": 1.0}, step=0)
    run_id = logger.run_id

    def steps() -> list[int]:
        return [m.step for m in client(uri).get_metric_history(run_id, "train/loss")]

    assert steps() == []
    logger.save()
    assert steps() == [0]
    logger.log_metrics({"train/loss": 0.5}, step=10)
    assert steps() == [0]
    logger.finalize("success")
    assert steps() == [0, 10]
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run_id


def test_a_new_local_store_is_set_up_quietly(tmp_path):
    proc = run_cli("logger=mlflow", "trainer.max_steps=20", *QUIET, cwd=tmp_path)
    console = proc.stdout + proc.stderr
    assert "mlflow.store" not in console and "Creating" not in console and " INFO " not in console
    assert (tmp_path / "outputs" / "mlflow.db").is_file()  # the store was created in this run
    assert metrics(only_run(tmp_path))["status"] == "completed"
