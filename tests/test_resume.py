"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import QUIET, metrics, one_line_error, only_run, run_cli, scalars

# long enough to be killed mid-run at descend's speed; a checkpoint at every multiple of 100 steps
STEPS = 20000
RUN = ["task.matrix.source=random", "task.matrix.rows=6", "optimizer=momentum", "optimizer.lr=0.2",
       f"trainer.max_steps={STEPS}", "callbacks.checkpoint.every_n_train_steps=100",
       "callbacks.checkpoint.min_interval_s=0", *QUIET]


def checkpoint_step(path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception:  # not written yet
        return -1


def signal_after_checkpoint(cwd, sig: int, step: int) -> tuple[int, str]:
    """Start the run, send `sig` once a checkpoint at `step` or later exists; the exit code and stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "train", *RUN], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        found = list((cwd / "outputs" / "runs").glob("*/*/checkpoints/last.ckpt"))
        if found and checkpoint_step(found[0]) >= step:
            proc.send_signal(sig)
            break
        time.sleep(0.01)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    run_cli(*RUN, cwd=straight)

    returncode, _ = signal_after_checkpoint(killed, signal.SIGKILL, 300)
    assert returncode == -signal.SIGKILL, "the run finished before it could be killed"
    run = only_run(killed)
    assert not (run / "metrics.json").exists()
    killed_at = checkpoint_step(run / "checkpoints" / "last.ckpt")
    assert 300 <= killed_at < STEPS

    run_cli(f"resume={run}", cwd=tmp_path)
    assert only_run(killed) == run  # same folder, no new one
    resumed = torch.load(run / "solution.pt", weights_only=True)["W"]
    expected = torch.load(only_run(straight) / "solution.pt", weights_only=True)["W"]
    assert torch.equal(resumed, expected)  # exactly, on the CPU
    assert metrics(run)["status"] == "completed" and metrics(run)["steps"] == STEPS
    # one continuous curve: every logged step once, from 0 to the end
    steps = sorted(scalars(run)["train/loss"])
    assert steps == list(range(0, STEPS, 10))
    assert scalars(run)["train/loss"] == pytest.approx(scalars(only_run(straight))["train/loss"], rel=1e-6)


def test_resume_of_a_folder_without_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text("[]\n")
    proc = run_cli(f"resume={tmp_path / 'run'}", cwd=tmp_path, expect=2)
    assert "last.ckpt not found" in one_line_error(proc)


def test_ctrl_c_records_the_run_and_says_how_to_resume(tmp_path):
    returncode, stderr = signal_after_checkpoint(tmp_path, signal.SIGINT, 100)
    assert returncode == 130, stderr[-2000:]
    run = only_run(tmp_path)
    record = metrics(run)
    assert record["status"] == "failed" and f"resume={run}" in record["error"]
    assert f"resume={run}" in stderr and "Traceback" not in stderr
    longer = checkpoint_step(run / "checkpoints" / "last.ckpt") + 500
    run_cli(f"resume={run}", f"trainer.max_steps={longer}", cwd=tmp_path)
    assert metrics(run)["status"] == "completed" and metrics(run)["steps"] == longer
