"""What a new user meets first: one-line errors before anything is made, what a failed run leaves,
train.log as the console's record, and how a sweep ends."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from conftest import QUIET, one_line_error, only_run, run_cli


def no_outputs(cwd) -> bool:
    return not (cwd / "outputs").exists()


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        (["optimizer.lrr=0.1,0.2"], "optimizer.lrr=0.1,0.2: optimizer.lrr is not a key of this config; did you mean optimizer.lr?"),
        (["scheduler=step,cosine", "scheduler.gamma=0.1"], "scheduler.gamma=0.1: scheduler.gamma is not a key of this config with scheduler=cosine"),
        (["task=nope,inverse"], "task=nope is unknown"),
        (["hparams_search=inverse_lr", "optimizer.lrr=0.1"], "optimizer.lrr=0.1: optimizer.lrr is not a key of this config"),
        (["task.matrix.values=[1,2"], "cannot parse this override"),
    ],
)
def test_a_refused_sweep_is_one_line_and_makes_no_folder(tmp_path, overrides, culprit):
    proc = run_cli("-m", *overrides, *QUIET, cwd=tmp_path, expect=2)
    assert culprit in one_line_error(proc)
    assert no_outputs(tmp_path)


def test_a_key_every_swept_option_has_can_be_set_once(tmp_path):
    # Hydra alone refuses it: scheduler.gamma is no key of the default scheduler=none
    run_cli("-m", "scheduler=step,exponential", "scheduler.gamma=0.5", "trainer.max_steps=3", *QUIET, cwd=tmp_path)
    jobs = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/.hydra/config.yaml"))
    assert len(jobs) == 2 and all("gamma: 0.5" in job.read_text() for job in jobs)


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="SLURM is installed here")
def test_slurm_launcher_without_slurm_is_one_line(tmp_path):
    proc = run_cli("-m", "hydra/launcher=slurm", "optimizer.lr=0.1,0.2", cwd=tmp_path, expect=2)
    assert "sbatch is not on PATH" in one_line_error(proc) and "hydra/launcher=basic" in proc.stderr
    assert no_outputs(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize(("overrides", "culprit"), [
    (["trainer=ddp"], "use trainer=ddp_cpu"),  # the fix that keeps data-parallel training
    (["task=linreg", "task.data.path=missing.csv"], "missing.csv: no such file"),
])
def test_a_refusal_found_before_training_is_one_line_and_writes_nothing(tmp_path, overrides, culprit):
    proc = run_cli(*overrides, *QUIET, cwd=tmp_path, expect=2)
    assert culprit in one_line_error(proc)
    assert proc.stdout.strip() == ""  # no summary lines before the error
    assert no_outputs(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_torchrun_without_gpus_says_it_once(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "train", "trainer=ddp",
               "hydra.run.dir=outputs/runs/ddp", *QUIET]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "trainer=ddp_cpu" in lines[0], proc.stdout + proc.stderr


def test_train_log_is_the_console_record(tmp_path):
    proc = run_cli("trainer.max_steps=5", *QUIET, cwd=tmp_path)
    log = (only_run(tmp_path) / "train.log").read_text()
    for line in proc.stdout.splitlines():
        if line.startswith(("descend:", "  run folder", "  tensorboard")):
            assert line.strip() in log


def test_a_sweep_ends_saying_where_to_look_and_fails_when_a_job_failed(tmp_path):
    proc = run_cli("-m", "optimizer.lr=0.1,0.46,-1", "trainer.max_steps=20", *QUIET, cwd=tmp_path, expect=1)
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    tail = proc.stdout.split("descend: sweep of 3 jobs: 2 completed, 1 failed\n")[1]
    assert "  best: 01_optimizer.lr=0.46" in tail
    assert f"  summary: {sweep / 'summary.md'}" in tail and f"tensorboard --logdir {sweep}" in tail


def test_sweep_summary_ranks_each_task_on_its_own_and_draws_zero_losses_at_a_floor():
    from matplotlib.figure import Figure

    from descend.multirun import loss_axis

    rows = [{"status": "completed", "loss": 0.0}, {"status": "completed", "loss": 1e-3}, {"status": "completed", "loss": 2.0},
            {"status": "diverged", "loss": None}]
    axes = Figure().subplots()
    floor, ceiling = loss_axis(axes, rows)
    assert axes.get_yscale() == "log" and floor == pytest.approx(1e-4) and ceiling == pytest.approx(20.0)


def test_multi_task_sweep_is_ranked_task_by_task(tmp_path):
    run_cli("-m", "task=inverse,linreg", "optimizer=sgd,lbfgs", "trainer.max_steps=20", *QUIET, cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    from descend.multirun import job_rows

    rows = job_rows(sweep)
    tasks = [row["task"] for row in rows]
    assert tasks == sorted(tasks) and set(tasks) == {"inverse", "linreg"}
    for task in ("inverse", "linreg"):
        losses = [row["loss"] for row in rows if row["task"] == task]
        assert losses == sorted(losses)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_slurm_sweeps_gpus_are_not_looked_for_on_the_login_node():
    from descend.prechecks import check_overrides, config_dir
    from descend.errors import RefusedCommand

    sweep = ["-m", "trainer.accelerator=gpu", "optimizer.lr=0.1,0.2"]
    check_overrides(["hydra/launcher=slurm", *sweep], config_dir())  # the jobs run on the cluster's GPU nodes
    with pytest.raises(RefusedCommand, match="torch sees none"):
        check_overrides(sweep, config_dir())  # the basic launcher runs them here
