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
    # numbered in job order, and named by what tells the jobs apart (not task=inverse, max_steps=60)
    assert [p.name for p in found] == ["00_optimizer.lr=0.01", "01_optimizer.lr=0.1", "02_optimizer.lr=0.46", "03_optimizer.lr=2.0"]
    statuses = {p.name[:2]: metrics(p)["status"] for p in found}
    assert statuses == {"00": "completed", "01": "completed", "02": "completed", "03": "diverged"}
    for job in found:
        for name in (".hydra/config.yaml", "solution.pt"):
            assert (job / name).exists(), (job.name, name)
        assert list(job.glob("events.out.tfevents.*")), job.name
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
    from descend.multirun import job_rows, swept_numbers

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
        # the run names are the job folders: no suffix, and sorted by name they are in job order
        expected = ["00_optimizer.lr=0.01", "01_optimizer.lr=0.1", "02_optimizer.lr=0.46", "03_optimizer.lr=2.0"]
        deadline = time.time() + 60
        while set(_get(base, "/data/runs")) < set(expected) and time.time() < deadline:
            time.sleep(0.5)
        assert sorted(_get(base, "/data/runs")) == expected
        tags = _get(base, "/data/plugin/scalars/tags")
        for run in expected:
            assert {"descent/train/loss", "descent/train/log10_loss", "distance/ref/rel_error", "distance/ref/log10_rel_error",
                    "final/loss"} <= set(tags[run]), run
            series = _get(base, "/data/plugin/scalars/scalars", run=run, tag="descent/train/loss")
            local = scalars(sweep / run)["train/loss"]
            assert [step for _, step, _ in series] == sorted(local) and len(series) >= 1
            final = _get(base, "/data/plugin/scalars/scalars", run=run, tag="final/loss")
            assert [step for _, step, _ in final] == [metrics(sweep / run)["steps"]]  # at the run's last step
        # the custom-scalars page: the four runs' layouts merged into one page, one quantity a chart
        layout = _get(base, "/data/plugin/custom_scalars/layout")
        (category,) = layout["category"]
        assert [chart["multiline"]["tag"] for chart in category["chart"]] == [
            ["^descent/train/log10_loss$"], ["^distance/ref/log10_rel_error$"], ["^distance/ref/log10_excess_loss$"],
            ["^distance/theory/log10_excess_loss$"], ["^lr-"]]
        # the HPARAMS tab compares the swept learning rates
        request = urllib.request.Request(f"{base}/data/plugin/hparams/experiment", data=b'{"experimentName": ""}',
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            hparams = json.loads(response.read())
        lr_info = [h for h in hparams["hparamInfos"] if h["name"] == "optimizer.lr"]
        assert lr_info and {m["name"]["tag"] for m in hparams["metricInfos"]} >= {"final/loss", "final/diverged"}
        # its table: each run's final metrics, taken at the run's last step
        body = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
                "colParams": [{"metric": {"tag": "final/loss", "group": ""}, "order": "ORDER_ASC"}], "startIndex": 0, "sliceSize": 100}
        request = urllib.request.Request(f"{base}/data/plugin/hparams/session_groups", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            groups = json.loads(response.read())["sessionGroups"]
        assert sorted(g["name"] for g in groups) == expected
        for group in groups:
            final = {m["name"]["tag"]: m for m in group["metricValues"]}
            assert final["final/diverged"]["trainingStep"] == metrics(sweep / group["name"])["steps"], group["name"]
            assert final["final/diverged"]["value"] == float(group["name"].startswith("03_")), group["name"]
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
    # two digits for 3 trials; the sampled learning rate names each, not the fixed trainer.max_steps
    assert [j.name.split("_")[0] for j in found] == ["00", "01", "02"]
    assert all(re.fullmatch(r"\d\d_optimizer\.lr=[0-9.e-]+", j.name) for j in found), [j.name for j in found]
    losses = [metrics(j)["metrics"]["loss"] if metrics(j)["status"] == "completed" else float("inf") for j in found]
    assert results["best_value"] == pytest.approx(min(losses))
    assert (sweep / "summary.csv").exists()


def test_parallel_launcher_runs_jobs_in_processes_into_the_same_folders(tmp_path):
    sweep = ["optimizer.lr=0.1,0.46", "trainer.max_steps=20", *QUIET]
    folders = {}
    for launcher in ("basic", "parallel"):
        cwd = tmp_path / launcher
        cwd.mkdir()
        processes = ["hydra.launcher.n_jobs=2"] if launcher == "parallel" else []
        run_cli("-m", f"hydra/launcher={launcher}", *processes, *sweep, cwd=cwd)
        (folder,) = (cwd / "outputs" / "multirun").glob("*/*")
        assert [metrics(j)["status"] for j in jobs(folder)] == ["completed", "completed"]
        assert (folder / "summary.md").exists()
        folders[launcher] = [j.name for j in jobs(folder)]
    # a job's folder is the same whichever launcher ran it
    assert folders["basic"] == folders["parallel"] == ["00_optimizer.lr=0.1", "01_optimizer.lr=0.46"]


def test_job_numbers_are_padded_to_the_sweep_size_and_names_drop_the_constants(monkeypatch):
    from omegaconf import OmegaConf

    from descend.multirun import JOB_COUNT, constant_keys, job_count, job_number, sweep_overrides

    basic = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "max_batch_size": None, "params": None}
    config = OmegaConf.create({"hydra": {"sweeper": basic, "overrides": {"task": [
        "task=inverse", "optimizer.lr=0.01,0.1,0.46", "seed=range(0,40)", "trainer.max_steps=60"]}}})
    overrides = sweep_overrides(config)
    assert job_count(config, overrides) == 120
    assert constant_keys(config, overrides) == ["task", "trainer.max_steps"]
    monkeypatch.setenv(JOB_COUNT, "120")
    assert [job_number(n) for n in (0, 7, 99, 119)] == ["000", "007", "099", "119"]
    monkeypatch.setenv(JOB_COUNT, "100")  # jobs 0 … 99
    assert job_number(7) == "07"
    monkeypatch.delenv(JOB_COUNT)  # a sweeper that does not say how many jobs it runs
    assert job_number(7) == "07"
    # Optuna says it up front; nothing swept on the command line: the names keep their overrides
    optuna = OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra_plugins.descend_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                                                     "n_trials": 250}, "overrides": {"task": ["trainer.max_steps=30"]}}})
    assert job_count(optuna, sweep_overrides(optuna)) == 250
    assert constant_keys(optuna, sweep_overrides(optuna)) == ["trainer.max_steps"]
    single = OmegaConf.create({"hydra": {"sweeper": basic, "overrides": {"task": ["task=inverse"]}}})
    assert job_count(single, sweep_overrides(single)) == 1 and constant_keys(single, sweep_overrides(single)) == []


def test_a_key_set_once_for_every_swept_option_is_left_out_of_the_folder_names():
    from omegaconf import OmegaConf

    from descend.prechecks import config_dir, keys_of_swept_groups
    from descend.multirun import constant_keys, sweep_overrides

    argv = keys_of_swept_groups(["-m", "scheduler=step,exponential", "scheduler.gamma=0.5"], config_dir())
    assert argv[-1] == "scheduler.gamma=choice(0.5)"  # checked job by job (see keys_of_swept_groups)
    basic = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "max_batch_size": None, "params": None}
    config = OmegaConf.create({"hydra": {"sweeper": basic, "overrides": {"task": argv[1:]}}})
    # shared by every job: out of 00_scheduler=step, as summary.md leaves it out
    assert constant_keys(config, sweep_overrides(config)) == ["scheduler.gamma"]


def test_slurm_launcher_preset_composes_against_the_plugin_schema():
    from hydra import compose, initialize_config_dir

    from descend.prechecks import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 1 and launcher.partition == "gpu" and launcher.timeout_min == 60
    from hydra.utils import get_class

    assert get_class(launcher._target_).__name__ == "SlurmLauncher"


def summary_rows(task: str, overrides: list[str], values: list[float], metric: str = "loss") -> list[dict]:
    return [{"job": f"{i:02d}_{o}", "task": task, "overrides": o, "status": "completed", "loss": v * 10, metric: v, "theory": {}}
            for i, (o, v) in enumerate(zip(overrides, values))]


def test_summary_png_draws_seeds_as_categories_and_wide_ranges_on_log_axes():
    from descend.multirun import summary_figure

    seeds = summary_rows("inverse", [f"seed={s} optimizer.lr={lr}" for s in (1, 2, 3) for lr in (0.01, 0.3)],
                         [0.5, 0.2, 0.4, 0.1, 0.45, 0.15])
    figure = summary_figure(seeds)
    by_seed, by_lr = [a for a in figure.axes if a.get_visible()]
    assert [t.get_text() for t in by_seed.get_xticklabels()] == ["1", "2", "3"]  # not 1.25, 1.5, …
    assert all(line.get_linestyle() == "None" for line in by_seed.get_lines())  # seeds are not joined by lines
    assert by_lr.get_xscale() == "log"  # 0.01 … 0.3: a 30x range
    legend = by_lr.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > by_lr.get_window_extent().x1 - 1  # beside the panel


def test_mlp_sweeps_are_ranked_by_the_validation_metric():
    from descend.multirun import ranking_metric, ranking_text

    rows = summary_rows("mlp", ["optimizer.lr=0.1", "optimizer.lr=0.01"], [0.3, 0.2], metric="val/mse")
    assert ranking_metric(rows) == "val/mse"
    assert ranking_text(rows) == "Sorted by final val/mse (validation)"
    inverse = summary_rows("inverse", ["optimizer.lr=0.1", "optimizer.lr=0.2"], [1.0, 2.0])
    assert ranking_text(rows + inverse) == "Sorted task by task, by final loss for inverse, val/mse (validation) for mlp"


def test_a_sweeps_console_and_folders_say_what_tells_the_jobs_apart(tmp_path):
    # the progress bar off (a pipe is no terminal), Lightning's model summary left at descend's default
    proc = run_cli("-m", "scheduler=step,exponential", "scheduler.gamma=0.5", "trainer.max_steps=5",
                   "trainer.enable_progress_bar=false", cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert [j.name for j in jobs(sweep)] == ["00_scheduler=step", "01_scheduler=exponential"]
    assert "Total params" not in proc.stdout and "┏" not in proc.stdout  # no model summary per job
    assert proc.stdout.count("descend: inverse completed after 5 steps") == 2
    assert "`Trainer.fit` stopped" not in proc.stdout  # descend's line names the limit instead


def test_values_with_slashes_make_one_job_folder_each_at_the_sweeps_root(tmp_path):
    """A sweep over data files: each job is one folder at the root (not data/a/… nested three deep),
    named in job order with `/` shown as `∕`; the summary lists every job with its values as given,
    and a failed job makes the sweep's exit status 1."""
    for part in ("a", "b"):
        (tmp_path / "data" / part).mkdir(parents=True)
        rows = "\n".join(f"{x},{3 * x + (1 if part == 'b' else 0)}" for x in range(1, 9))
        (tmp_path / "data" / part / "houses.csv").write_text("area,price\n" + rows + "\n")
    files = "data/a/houses.csv,data/b/houses.csv,data/c/houses.csv"  # c is missing: that job fails
    proc = run_cli("-m", "task=linreg", f"task.data.path={files}", "task.data.target=price", "optimizer=lbfgs",
                   "trainer.max_steps=5", *QUIET, cwd=tmp_path, expect=1)
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["00_task.data.path=data\u2215a\u2215houses.csv", "01_task.data.path=data\u2215b\u2215houses.csv",
                    "02_task.data.path=data\u2215c\u2215houses.csv"]
    with (sweep / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["overrides"], r["status"]) for r in rows) == [
        ("task.data.path=data/a/houses.csv", "completed"), ("task.data.path=data/b/houses.csv", "completed"),
        ("task.data.path=data/c/houses.csv", "failed")]
    assert "sweep of 3 jobs: 2 completed, 1 failed" in proc.stdout


def test_a_folder_name_too_long_for_the_file_system_is_cut_and_told_apart():
    from descend.multirun import NAME_BYTES, folder_name

    long = ",".join(f"task.data.path=/very/long/folder/{i}/" + "x" * 60 for i in range(4))
    names = {folder_name(long), folder_name(long.replace("x", "y"))}
    assert len(names) == 2 and all(len(n.encode()) <= NAME_BYTES + 3 and "/" not in n for n in names)
