"""Sweeps through the real CLI: job folders, the summary, a diverging job, TensorBoard's view of it all."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import QUIET, metrics, run_cli, scalars


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_cli("-m", "task=inverse", "optimizer.lr=0.01,0.1,0.46,2.0", "trainer.max_steps=60", *QUIET, cwd=cwd)
    (sweep,) = (cwd / "outputs" / "multirun").glob("*/*")
    return sweep, proc


def jobs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").exists())


def test_each_job_is_a_complete_run_and_the_diverging_one_does_not_stop_the_sweep(lr_sweep):
    sweep, proc = lr_sweep
    found = jobs(sweep)
    assert [p.name.split(",")[0] for p in found] == ["0_optimizer.lr=0.01", "1_optimizer.lr=0.1", "2_optimizer.lr=0.46", "3_optimizer.lr=2.0"]
    statuses = {p.name[0]: metrics(p)["status"] for p in found}
    assert statuses == {"0": "completed", "1": "completed", "2": "completed", "3": "diverged"}
    for job in found:
        for name in (".hydra/config.yaml", "solution.pt", "tensorboard"):
            assert (job / name).exists(), (job.name, name)
        assert (job / "checkpoints" / "last.ckpt").exists() == (metrics(job)["status"] == "completed")
    assert metrics(found[3])["steps"] < 60  # stopped early


def test_summary_files_rank_the_jobs(lr_sweep):
    sweep, _ = lr_sweep
    with (sweep / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["overrides"] for r in rows] == ["optimizer.lr=0.46", "optimizer.lr=0.1", "optimizer.lr=0.01", "optimizer.lr=2.0"]
    assert [r["status"] for r in rows] == ["completed"] * 3 + ["diverged"]
    losses = [float(r["loss"]) for r in rows[:3]]
    assert losses == sorted(losses) and losses[0] < 1e-3
    for column in ("ref/rel_error", "steps", "wall_time_s"):
        assert column in rows[0]
    markdown = (sweep / "summary.md").read_text()
    assert "3 completed, 1 diverged, 0 failed" in markdown and markdown.count("\n| ") == 5
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_png_plots_the_loss_against_the_swept_key(lr_sweep):
    from descend.sweep import job_rows, swept_numbers

    rows = job_rows(lr_sweep[0])
    assert swept_numbers(rows) == {"optimizer.lr": [0.46, 0.1, 0.01, 2.0]}


def _tensorboard(logdir: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0",
         "--load_fast", "false", "--reload_interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 60
    for line in proc.stdout:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if found:
            return proc, f"http://127.0.0.1:{found.group(1)}"
        if time.time() > deadline:
            break
    proc.kill()
    raise AssertionError("tensorboard did not start")


def _get(base: str, path: str, **query: str):
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_serves_every_job_and_its_loss_curve(lr_sweep):
    sweep, _ = lr_sweep
    server, base = _tensorboard(sweep)
    try:
        expected = {f"{job.name}/tensorboard" for job in jobs(sweep)}
        deadline = time.time() + 60
        while set(_get(base, "/data/runs")) < expected and time.time() < deadline:
            time.sleep(0.5)
        assert expected <= set(_get(base, "/data/runs"))
        tags = _get(base, "/data/plugin/scalars/tags")
        for run in expected:
            assert {"train/loss", "ref/rel_error", "final/loss"} <= set(tags[run]), run
            series = _get(base, "/data/plugin/scalars/scalars", run=run, tag="train/loss")
            local = scalars(sweep / run.split("/")[0])["train/loss"]
            assert [step for _, step, _ in series] == sorted(local) and len(series) >= 1
        # the HPARAMS tab compares the swept learning rates
        request = urllib.request.Request(f"{base}/data/plugin/hparams/experiment", data=b'{"experimentName": ""}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            hparams = json.loads(response.read())
        lr_info = [h for h in hparams["hparamInfos"] if h["name"] == "optimizer.lr"]
        assert lr_info and {m["name"]["tag"] for m in hparams["metricInfos"]} >= {"final/loss", "final/diverged"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_optuna_search_returns_the_final_loss(tmp_path):
    run_cli("hparams_search=inverse_lr", "hydra.sweeper.n_trials=3", "trainer.max_steps=30", *QUIET, cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    import yaml

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    found = jobs(sweep)
    assert len(found) == 3
    losses = [metrics(j)["metrics"]["loss"] if metrics(j)["status"] == "completed" else float("inf") for j in found]
    assert results["best_value"] == pytest.approx(min(losses))
    assert (sweep / "summary.csv").exists()


def test_parallel_launcher_runs_jobs_in_processes(tmp_path):
    run_cli("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "optimizer.lr=0.1,0.46", "trainer.max_steps=20", *QUIET, cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert [metrics(j)["status"] for j in jobs(sweep)] == ["completed", "completed"]
    assert (sweep / "summary.md").exists()


def test_slurm_launcher_preset_composes_against_the_plugin_schema():
    from hydra import compose, initialize_config_dir

    from descend.cli import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 1 and launcher.partition == "gpu" and launcher.timeout_min == 60
    from hydra.utils import get_class

    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
