"""A run stops at the step where a signal arrived or its loss went bad, and saves that step's state."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import QUIET, metrics, only_run, run_cli, scalars, tensorboard_events

# a 6×6 matrix at a small lr: still moving after STEPS steps, so the final W depends on every step
STEPS = 40000
RUN = ["task.matrix.source=random", "task.matrix.rows=6", "optimizer=momentum", "optimizer.lr=0.001",
       f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=10", *QUIET]


def signal_while_training(cwd, sig: int, run: list[str] = RUN, env: dict | None = None) -> subprocess.CompletedProcess:
    """Start the run, send `sig` at a random moment of its training, and wait for it to end."""
    proc = subprocess.Popen([sys.executable, "-m", "train", *run], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        logs = list((cwd / "outputs").rglob("events.out.tfevents.*"))
        if logs and logs[0].stat().st_size > 2000:  # training has logged its first steps
            time.sleep(random.uniform(0.0, 1.0))  # then somewhere inside a group of steps
            proc.send_signal(sig)
            break
        time.sleep(0.01)
    stdout, stderr = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_at_its_step_and_resume_ends_bitwise_where_a_straight_run_ends(tmp_path, sig, code):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    straight.mkdir(), stopped.mkdir()
    proc = signal_while_training(stopped, sig)
    assert proc.returncode == code, proc.stderr[-3000:]
    run = only_run(stopped)
    record = metrics(run)
    step = record["steps"]
    assert record["status"] == "stopped" and 0 < step < STEPS
    # last.ckpt at the very step the run stopped at, though checkpoints are due every 500 steps and 30 s
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step
    assert "Traceback" not in proc.stderr and f"at step {step};" in proc.stderr
    command = next(line for line in proc.stderr.splitlines() if "continue with:" in line).split("continue with: ")[1]
    assert command.startswith("python -m train resume=")

    # the printed command, as given, from another folder
    subprocess.run(f"{sys.executable} -m train {command.split('python -m train ')[1]}", shell=True, cwd=tmp_path, check=True,
                   capture_output=True)
    run_cli(*RUN, cwd=straight)
    assert metrics(run)["status"] == "completed" and metrics(run)["steps"] == STEPS
    expected = torch.load(only_run(straight) / "solution.pt", weights_only=True)["W"]
    assert torch.equal(torch.load(run / "solution.pt", weights_only=True)["W"], expected)
    curve = scalars(run)["train/loss"]
    assert sorted(curve) == [*range(0, STEPS, 10), STEPS]  # every logged step once, and the last step
    assert curve == scalars(only_run(straight))["train/loss"]


def test_a_run_without_checkpoints_stopped_by_sigterm_says_it_cannot_be_resumed(tmp_path):
    proc = signal_while_training(tmp_path, signal.SIGTERM, [*RUN, "~callbacks.checkpoint"])
    assert proc.returncode == 143, proc.stderr[-3000:]
    record = metrics(only_run(tmp_path))
    assert record["status"] == "stopped" and "no checkpoint" in record["error"] and "resume=" not in record["error"]


def test_a_diverged_run_ends_with_the_state_of_the_step_it_stopped_at(tmp_path):
    # lr 1.05 on the seed inverse: the loss grows slowly and passes the guard's limit inside a group of 100 steps
    proc = run_cli("optimizer.lr=1.05", "trainer.max_steps=1000", *QUIET, cwd=tmp_path, expect=3)
    run = only_run(tmp_path)
    record = metrics(run)
    step = record["steps"]
    assert step % 100 and f"diverged at step {step} " in proc.stderr
    # the saved solution gives the loss metrics.json reports, and ref/* are at that step too
    task = instantiate(OmegaConf.load(run / ".hydra" / "config.yaml").task)
    W = torch.load(run / "solution.pt", weights_only=True)["W"]
    with torch.no_grad():
        task.weight.copy_(W)
        assert float(task.loss(task.full_batch())) == pytest.approx(record["metrics"]["loss"], rel=1e-6)
    curve = scalars(run)
    assert max(curve["train/loss"]) == step
    assert curve["train/loss"][step] == pytest.approx(record["metrics"]["loss"], rel=1e-6)
    assert curve["final/loss"] == {step: pytest.approx(record["metrics"]["loss"], rel=1e-6)}
    assert record["metrics"]["ref/excess_loss"] == pytest.approx(record["metrics"]["loss"], rel=1e-6)  # the optimum is 0
    assert torch.isfinite(W).all()
    # a picture at the step it stopped at
    assert tensorboard_events(run).Images("images/W·M")[-1].step == step


# what srun sets for a one-task job (Lightning's SLURMEnvironment detects it from these)
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
         "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_a_requeued_slurm_job_continues_its_run_exactly_with_resume_auto(tmp_path, sig):
    folder = tmp_path / "outputs" / "slurm" / SLURM["SLURM_JOB_ID"]
    command = ["resume=auto", f"hydra.run.dir={folder}", *RUN]  # the README's srun line, the same at every requeue
    proc = signal_while_training(tmp_path, sig, command, env=SLURM)
    assert proc.returncode == 128 + sig, proc.stderr[-3000:]
    assert metrics(folder)["status"] == "stopped"
    assert not list(folder.rglob("hpc_ckpt*"))  # Lightning's own requeue path is off
    env = {**os.environ, **SLURM}
    requeued = subprocess.run([sys.executable, "-m", "train", *command], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "resuming at step" in requeued.stdout
    (tmp_path / "straight").mkdir()
    run_cli(*RUN, cwd=tmp_path / "straight")
    straight = only_run(tmp_path / "straight")
    assert torch.equal(torch.load(folder / "solution.pt", weights_only=True)["W"],
                       torch.load(straight / "solution.pt", weights_only=True)["W"])
    curves = scalars(folder)
    assert curves["train/loss"] == scalars(straight)["train/loss"]  # one continuous curve, every step once
    assert list(curves["final/loss"]) == [STEPS]  # one final point


def test_resume_auto_starts_the_run_when_its_folder_has_no_checkpoint(tmp_path):
    folder = tmp_path / "job"
    run_cli("resume=auto", f"hydra.run.dir={folder}", "trainer.max_steps=20", *QUIET, cwd=tmp_path)
    assert metrics(folder)["status"] == "completed" and metrics(folder)["steps"] == 20
    run_cli("resume=auto", f"hydra.run.dir={folder}", "trainer.max_steps=40", *QUIET, cwd=tmp_path)
    assert metrics(folder)["steps"] == 40 and metrics(folder)["resumed"][0]["step"] == 20


def test_sigterm_to_rank_0_of_ddp_cpu_stops_every_rank_at_one_step_and_resumes_exactly(tmp_path):
    run = ["trainer=ddp_cpu", "trainer.devices=2", *RUN, "trainer.max_steps=3000"]
    (tmp_path / "stopped").mkdir(), (tmp_path / "straight").mkdir()
    proc = signal_while_training(tmp_path / "stopped", signal.SIGTERM, run)
    assert proc.returncode == 143, proc.stderr[-3000:]
    folder = only_run(tmp_path / "stopped")
    step = metrics(folder)["steps"]
    assert metrics(folder)["status"] == "stopped" and 0 < step < 3000
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step
    run_cli(f"resume={folder}", cwd=tmp_path)
    run_cli(*run, cwd=tmp_path / "straight")
    assert torch.equal(torch.load(folder / "solution.pt", weights_only=True)["W"],
                       torch.load(only_run(tmp_path / "straight") / "solution.pt", weights_only=True)["W"])


def run_in_process(monkeypatch, *overrides: str) -> int:
    """`python -m train <overrides>` in this process; its exit code."""
    from descend.cli import main

    monkeypatch.setattr(sys, "argv", ["train", *overrides])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code


@pytest.mark.parametrize("optimizer", [["optimizer.lr=1.05"], ["optimizer=momentum", "optimizer.lr=1.91"]])
def test_a_replayed_group_ends_at_the_bad_step_exactly_as_the_per_step_check_does(tmp_path, monkeypatch, optimizer):
    # the GPU's way (replay.py), forced on the CPU, against the CPU's per-step check
    import descend.stepping

    diverging = [*optimizer, "trainer.max_steps=1000", *QUIET]
    assert run_in_process(monkeypatch, f"hydra.run.dir={tmp_path / 'checked'}", *diverging) == 3
    monkeypatch.setattr(descend.stepping, "HOST_CHECKED", ())
    assert run_in_process(monkeypatch, f"hydra.run.dir={tmp_path / 'replayed'}", *diverging) == 3
    checked, replayed = metrics(tmp_path / "checked"), metrics(tmp_path / "replayed")
    assert replayed["steps"] == checked["steps"] and checked["steps"] % 100
    assert replayed["metrics"] == checked["metrics"]
    assert torch.equal(torch.load(tmp_path / "replayed" / "solution.pt", weights_only=True)["W"],
                       torch.load(tmp_path / "checked" / "solution.pt", weights_only=True)["W"])
