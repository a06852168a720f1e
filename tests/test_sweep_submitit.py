"""hydra/launcher=slurm's code path without SLURM: hydra-submitit-launcher's `submitit_local` runs
each job through submitit (pickled, in a process of its own, as on a cluster node). Its sweep
writes the job folders the basic launcher writes, and `-m resume=<sweep folder>` continues it after
the whole process group was killed (a node that went down)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import QUIET, metrics, run_cli
from test_sweep_resume import assert_same_sweep, jobs, sweep_folder

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

SWEEP = ["optimizer.lr=0.1,0.2,0.3", "trainer.max_steps=3000", "callbacks.checkpoint.every_n_train_steps=500",
         "callbacks.checkpoint.min_interval_s=0", *QUIET]
SUBMITIT = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=30"]


def test_a_submitit_sweep_writes_the_basic_launchers_job_folders_and_resumes_after_a_kill(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    killed.mkdir(), straight.mkdir()
    # the whole process group, submitit's job processes included, as when a node goes down
    proc = subprocess.Popen([sys.executable, "-m", "train", "-m", *SUBMITIT, *SWEEP], cwd=killed, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(killed.glob("outputs/multirun/*/*/0*_*/checkpoints/last.ckpt")):
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    sweep = sweep_folder(killed)
    assert not all((job / "metrics.json").exists() for job in jobs(sweep))  # killed before the sweep ended

    resumed = run_cli("-m", f"resume={sweep}", cwd=tmp_path)
    assert "descend: sweep of 3 jobs: 3 completed" in resumed.stdout
    assert all(metrics(job)["status"] == "completed" for job in jobs(sweep))
    run_cli("-m", *SWEEP, cwd=straight)  # the basic launcher, uninterrupted
    assert_same_sweep(sweep, sweep_folder(straight))
    assert (sweep / ".submitit").is_dir()  # submitit did run the jobs


def test_two_processes_share_one_optuna_study_through_one_sqlite_file(tmp_path):
    """The stand-in for several machines on one database: two searches at once, one study."""
    optuna = pytest.importorskip("optuna")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, "-m", "train", "-m", "hparams_search=inverse_lr", "hydra.sweeper.n_trials=3",
               "hydra.sweeper.study_name=shared", f"hydra.sweeper.storage={url}", "trainer.max_steps=50", *QUIET]
    folders = [tmp_path / name for name in ("a", "b")]
    for folder in folders:
        folder.mkdir()
    procs = [subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for folder in folders]
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    import yaml

    for folder in folders:  # each search ran and counts its own trials, and sees the other's
        sweep = sweep_folder(folder)
        assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["n_trials"] == 3
        assert len(jobs(sweep)) == 3 and all(metrics(job)["status"] == "completed" for job in jobs(sweep))
    assert len({t.number for t in study.trials}) == 6  # no trial number handed out twice
