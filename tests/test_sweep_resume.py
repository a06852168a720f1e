"""A sweep killed with SIGKILL and resumed with `python -m train -m resume=<sweep folder>` ends as the
same sweep run straight through: every job's solution, metrics and summary row; the jobs that had
finished are left as they were (bytes and modification times)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import QUIET, metrics, run_cli

SWEEP = ["optimizer.lr=0.1,0.2,0.3,0.4,0.5,0.6", "trainer.max_steps=4000", "callbacks.checkpoint.every_n_train_steps=500",
         "callbacks.checkpoint.min_interval_s=0", *QUIET]


def sweep_folder(cwd: Path) -> Path:
    (folder,) = (cwd / "outputs" / "multirun").glob("*/*")
    return folder


def jobs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[:2].isdigit())


def kill_when(cwd: Path, argv: list[str], ready: str) -> None:
    """Start `python -m train <argv>` in `cwd` and SIGKILL it once a file matching `ready` exists."""
    proc = subprocess.Popen([sys.executable, "-m", "train", *argv], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(cwd.glob(ready)):
        time.sleep(0.02)
    assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.returncode}\n{proc.stderr.read()[-3000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def summary_rows(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "summary.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in csv.DictReader(handle)]


def record(job: Path) -> dict:
    # a resumed job's record says so ("resumed": its step, issue 26's Sessions), a straight one's does not
    return {k: v for k, v in metrics(job).items() if k not in ("wall_time_s", "resumed")}


def assert_same_sweep(resumed: Path, straight: Path) -> None:
    """Bit for bit: each job's folder name, metrics.json (but its wall time), solution, and the summary's rows."""
    assert [j.name for j in jobs(resumed)] == [j.name for j in jobs(straight)]
    for mine, theirs in zip(jobs(resumed), jobs(straight)):
        assert record(mine) == record(theirs), mine.name
        a, b = (torch.load(j / "solution.pt", weights_only=True) for j in (mine, theirs))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), mine.name
    assert summary_rows(resumed) == summary_rows(straight)
    assert (resumed / "summary.md").exists() and (resumed / "summary.png").exists()


@pytest.mark.parametrize("launcher", ["basic", "parallel"])
def test_a_sweep_killed_in_its_third_job_resumes_to_the_straight_sweep(tmp_path, launcher):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    killed.mkdir(), straight.mkdir()
    # the parallel launcher with one process runs the jobs in order, as the basic one does
    argv = ["-m", f"hydra/launcher={launcher}", *(["hydra.launcher.n_jobs=1"] if launcher == "parallel" else []), *SWEEP]
    kill_when(killed, argv, "outputs/multirun/*/*/02_*/checkpoints/last.ckpt")
    sweep = sweep_folder(killed)
    first_two = [snapshot(job) for job in jobs(sweep)[:2]]
    assert [metrics(j)["status"] for j in jobs(sweep)[:2]] == ["completed", "completed"]
    assert not (jobs(sweep)[2] / "metrics.json").exists() and len(jobs(sweep)) == 3  # killed inside job 2

    proc = run_cli("-m", f"resume={sweep}", cwd=tmp_path)
    assert "resume: job 2 continues from its checkpoint" in proc.stdout
    assert "descend: sweep of 6 jobs: 6 completed" in proc.stdout
    assert [snapshot(job) for job in jobs(sweep)[:2]] == first_two
    run_cli(*argv, cwd=straight)
    assert_same_sweep(sweep, sweep_folder(straight))
    assert ["resumed" in metrics(job) for job in jobs(sweep)] == [False, False, True, False, False, False]  # job 2 says so
    # job 2's curve continues from its checkpoint: no step twice in TensorBoard (purge_step)
    steps = [s for s in scalars_steps(jobs(sweep)[2])]
    assert steps == sorted(set(steps))


def resume_three_members_to_the_straight_sweep(sweep: Path, argv: list[str], tmp_path: Path, straight: Path) -> None:
    """Resume the stopped 3-member population sweep; it ends bit for bit where the same sweep run
    straight in `straight` ends, one curve each (the stopped run's tail purged)."""
    from conftest import scalars

    saved = {job.name: torch.load(job / "checkpoints" / "last.ckpt", weights_only=False) for job in jobs(sweep)}
    # the seconds each member trained before it stopped (or was killed), as its checkpoint's Sessions holds them
    trained = {name: next(state["wall_time_s"] for key, state in checkpoint["callbacks"].items() if "Sessions" in key)
               for name, checkpoint in saved.items()}
    assert all(seconds > 0 for seconds in trained.values()), trained
    proc = run_cli("-m", f"resume={sweep}", cwd=tmp_path)
    assert proc.stdout.count("continues from its checkpoint") == 3
    assert "population: jobs 0-2 train together (3 members)" in proc.stdout
    for job in jobs(sweep):  # the record of both sessions, as a single run's: their time added up, the resume
        record = metrics(job)
        assert record["wall_time_s"] > trained[job.name], job.name
        assert record["resumed"] == [{"step": saved[job.name]["global_step"], "overrides": []}], job.name
    run_cli(*argv, cwd=straight)
    assert_same_sweep(sweep, sweep_folder(straight))
    for mine, theirs in zip(jobs(sweep), jobs(sweep_folder(straight))):
        assert metrics(mine)["metrics"]["loss"] > 0  # not converged to an exact zero, where any two runs agree
        assert scalars(mine)["train/loss"] == scalars(theirs)["train/loss"], mine.name


def scalars_steps(job: Path) -> list[int]:
    from conftest import scalars

    return sorted(scalars(job)["train/loss"])


@pytest.mark.parametrize("members", [
    ["optimizer=momentum", "optimizer.lr=0.01,0.02,0.03"],
    # Adam's bias correction counts the steps before the kill; StepLR's lr is the checkpoint's
    ["task=linreg", "optimizer=adam", "optimizer.lr=0.001,0.002,0.003", "scheduler=step", "scheduler.step_size=700"],
], ids=["inverse-momentum", "linreg-adam-steplr"])
def test_a_population_sweep_killed_mid_training_resumes_as_one_population_from_its_members_checkpoints(tmp_path, members):
    """Every member had checkpointed when the kill came: they continue together, each from its own
    checkpoint, and end bit for bit where the straight population sweep's members end."""
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    killed.mkdir(), straight.mkdir()
    argv = ["-m", "hydra/launcher=population", *members, "trainer.max_steps=20000",
            "callbacks.checkpoint.every_n_train_steps=100", "callbacks.checkpoint.min_interval_s=0", *QUIET]
    kill_when(killed, argv, "outputs/multirun/*/*/02_*/checkpoints/last.ckpt")
    sweep = sweep_folder(killed)
    assert len(jobs(sweep)) == 3 and not any((j / "metrics.json").exists() for j in jobs(sweep))
    resume_three_members_to_the_straight_sweep(sweep, argv, tmp_path, straight)


def test_an_optuna_search_killed_after_three_trials_resumes_to_the_same_study(tmp_path):
    search = ["-m", "hparams_search=inverse_lr", "hydra.sweeper.n_trials=8", "trainer.max_steps=3000",
              "callbacks.checkpoint.every_n_train_steps=500", "callbacks.checkpoint.min_interval_s=0", *QUIET]
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    killed.mkdir(), straight.mkdir()
    kill_when(killed, search, "outputs/multirun/*/*/03_*/checkpoints/last.ckpt")
    sweep = sweep_folder(killed)
    assert len(jobs(sweep)) == 4 and not (jobs(sweep)[3] / "metrics.json").exists()
    run_cli("-m", f"resume={sweep}", cwd=tmp_path)
    run_cli(*search, cwd=straight)
    import yaml

    results = [yaml.safe_load((s / "optimization_results.yaml").read_text()) for s in (sweep, sweep_folder(straight))]
    assert results[0]["n_trials"] == 8 and results[0] == results[1]
    assert_same_sweep(sweep, sweep_folder(straight))
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep / "optuna_journal.log")))
    study = optuna.load_study(study_name="inverse_lr", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 8  # trial 3, killed running, told once it ended


def test_a_nan_trial_is_told_as_the_worst_value_and_the_search_goes_on(tmp_path):
    # without the divergence guard, lr=30 ends with a non-finite loss (metrics.json: null): diverged (issue 26)
    proc = run_cli("-m", "hparams_search=inverse_lr", "hydra.sweeper.n_trials=2", "optimizer.lr=choice(30.0,0.5)",
                   "~callbacks.divergence_guard", "trainer.max_steps=100", *QUIET, cwd=tmp_path)
    import yaml

    sweep = sweep_folder(tmp_path)
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["n_trials"] == 2 and "1 completed, 1 diverged" in proc.stdout
    losses = [metrics(j)["metrics"]["loss"] for j in jobs(sweep)]
    assert None in losses  # the NaN trial
    assert results["best_value"] == min(v for v in losses if v is not None) or results["best_value"] == float("inf")


def test_a_storage_password_never_lands_in_the_records_or_the_console(tmp_path):
    proc = run_cli("-m", "hparams_search=inverse_lr", "hydra.sweeper.n_trials=1",
                   "hydra.sweeper.storage=postgresql://descend:s3cr3t-pw@127.0.0.1:9/study", cwd=tmp_path, expect=2)
    assert "s3cr3t-pw" not in proc.stdout + proc.stderr
    assert "postgresql://descend:***@127.0.0.1:9/study" in proc.stderr
    assert not (tmp_path / "outputs").exists()  # refused before the sweep folder


def test_a_password_moves_to_the_environment_and_the_override_reads_it_back():
    from omegaconf import OmegaConf

    from descend.search import PASSWORD_ENV, mask_storage_override, masked

    environ: dict[str, str] = {}
    argv = mask_storage_override(["-m", "hydra.sweeper.storage=postgresql://me:p%40ss@db:5432/s", "optimizer.lr=0.1"], environ)
    assert argv == ["-m", f"hydra.sweeper.storage=postgresql://me:${{oc.env:{PASSWORD_ENV}}}@db:5432/s", "optimizer.lr=0.1"]
    assert environ == {PASSWORD_ENV: "p%40ss"}
    os.environ[PASSWORD_ENV] = "p%40ss"
    try:  # what Hydra records is the text; what the sweeper receives, resolved, is the URL
        url = OmegaConf.create({"s": argv[1].split("=", 1)[1]})
        assert OmegaConf.to_container(url, resolve=True)["s"] == "postgresql://me:p%40ss@db:5432/s"
    finally:
        del os.environ[PASSWORD_ENV]
    assert masked("postgresql://me:secret@db/s") == "postgresql://me:***@db/s" and masked("sqlite:///a.db") == "sqlite:///a.db"
    assert mask_storage_override(["hydra.sweeper.storage=sqlite:///study.db"], environ) == ["hydra.sweeper.storage=sqlite:///study.db"]


def test_the_search_space_keeps_hydras_grammar():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from descend.search import search_space

    space, fixed = search_space(["optimizer.lr=tag(log, interval(0.001, 2.0))", "a=interval(0, 1)", "b=int(interval(1, 10))",
                                 "c=range(1, 5)", "d=choice(sgd, adam)", "trainer.max_steps=30", "a=0.5"])
    assert space == {"optimizer.lr": FloatDistribution(0.001, 2.0, log=True), "b": IntDistribution(1, 10),
                     "c": IntDistribution(1, 4), "d": CategoricalDistribution(["sgd", "adam"])}
    assert fixed == ["trainer.max_steps=30", "a=0.5"]  # given again, fixed: the later one counts


def test_job_states_decide_what_a_resumed_sweep_runs(tmp_path):
    from descend.resume_sweep import job_state, runs

    def job(name: str, status: str | None, checkpoint: bool, error: str = "") -> Path:
        folder = tmp_path / name
        (folder / "checkpoints").mkdir(parents=True)
        if status:
            (folder / "metrics.json").write_text(json.dumps({"status": status, "error": error}))
        if checkpoint:
            (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
        return folder

    assert job_state(job("done", "completed", True)) == "done"
    assert job_state(job("diverged", "diverged", False)) == "done"
    assert job_state(job("failed", "failed", False, "ValueError: x")) == "done"
    assert job_state(job("ctrl-c", "failed", True, "interrupted at step 300; continue with: …")) == "resume"
    assert job_state(job("stopped", "stopped", True)) == "resume"
    assert job_state(job("killed", None, True)) == "resume"
    assert job_state(job("killed-early", None, False)) == "start"
    assert job_state(tmp_path / "never") == "start"
    assert runs([2, 3, 4, 7, 9, 10]) == [(2, 3), (7, 1), (9, 2)]


def test_ctrl_c_stops_a_sweep_that_says_how_to_resume_it(tmp_path):
    argv = ["-m", "optimizer.lr=0.1,0.2,0.3", *SWEEP[1:]]
    proc = subprocess.Popen([sys.executable, "-m", "train", *argv], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob("outputs/multirun/*/*/01_*/checkpoints/last.ckpt")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    sweep = sweep_folder(tmp_path)
    assert proc.returncode == 130, stderr[-2000:]
    assert f"continue it with: python -m train -m resume={sweep}" in stderr
    assert metrics(jobs(sweep)[1])["status"] in ("failed", "stopped")  # interrupted: to be resumed, not a finished failure
    resumed = run_cli("-m", f"resume={sweep}", cwd=tmp_path)
    assert "resume: job 1 continues from its checkpoint" in resumed.stdout and "sweep of 3 jobs: 3 completed" in resumed.stdout
    assert [metrics(j)["steps"] for j in jobs(sweep)] == [4000] * 3


def test_a_sweep_resumes_only_with_its_own_overrides(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {overrides: {hydra: [], task: ['optimizer.lr=0.1,0.2']}}\n")
    from conftest import one_line_error

    proc = run_cli("-m", f"resume={sweep}", "trainer.max_steps=10", cwd=tmp_path, expect=2)
    assert "drop trainer.max_steps=10" in one_line_error(proc)
    assert sorted(p.name for p in sweep.iterdir()) == ["multirun.yaml"]


def test_hydra_sweeper_optuna_and_basic_are_descends_even_beside_hydras_optuna_plugin():
    import importlib.util

    from hydra import compose, initialize_config_dir

    from descend.prechecks import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        search = compose("train", overrides=["hparams_search=inverse_lr"], return_hydra_config=True)
        plain = compose("train", return_hydra_config=True)
    assert search.hydra.sweeper._target_ == "hydra_plugins.descend_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert search.hydra.sweeper.sampler.seed == 314 and search.hydra.sweeper.params["optimizer.lr"] == "tag(log, interval(0.001, 2.0))"
    assert plain.hydra.sweeper._target_ == "hydra_plugins.descend_basic_sweeper.basic_sweeper.BasicSweeper"
    # where Hydra's old plugin is installed (it registers hydra/sweeper=optuna too), the entry above was still descend's
    print("hydra-optuna-sweeper installed:", importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None)


def signal_mid_training(cwd: Path, argv: list[str], sig: int, code: int, logged: int, members: int = 3) -> str:
    """Start `python -m train <argv>` in `cwd`, send `sig` at a random moment (within a second) once
    each of the `members` event files holds `logged` bytes, and check its exit code; its stderr."""
    import random

    proc = subprocess.Popen([sys.executable, "-m", "train", *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        logs = list((cwd / "outputs").rglob("events.out.tfevents.*"))
        if len(logs) >= members and all(log.stat().st_size > logged for log in logs):
            time.sleep(random.uniform(0.0, 1.0))
            proc.send_signal(sig)
            break
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == code, stderr[-3000:]
    return stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_a_population_sweep_at_its_step_and_resume_ends_bitwise_where_the_straight_sweep_ends(tmp_path, sig, code):
    """A real signal at a random moment of training: every member stops at that step with its
    checkpoint there (none was due: every 500 steps but at most one per 30 s), exit 143 / 130, and the
    sweep resumed as one population ends bit for bit where the uninterrupted sweep ends."""

    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    stopped.mkdir(), straight.mkdir()
    argv = ["-m", "hydra/launcher=population", "optimizer=momentum", "optimizer.lr=0.01,0.02,0.03", "trainer.max_steps=30000",
            "trainer.log_every_n_steps=10", *QUIET]
    stderr = signal_mid_training(stopped, argv, sig, code, logged=2000)  # the members have logged their first steps
    sweep = sweep_folder(stopped)
    assert f"continue it with: python -m train -m resume={sweep}" in stderr and "Traceback" not in stderr
    assert "continue with: python -m train resume=" not in stderr  # the sweep's line, not one a member (metrics.json keeps each)
    steps = set()
    for job in jobs(sweep):
        record = metrics(job)
        assert record["status"] == "stopped" and f"resume='{job}'" in record["error"], record
        assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == record["steps"]
        steps.add(record["steps"])
    (step,) = steps  # one step for every member
    assert 0 < step < 30000
    resume_three_members_to_the_straight_sweep(sweep, argv, tmp_path, straight)
