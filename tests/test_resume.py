"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import os
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


def signal_after_checkpoint(cwd, sig: int, step: int, run: list[str] = RUN) -> tuple[int, str]:
    """Start the run, send `sig` once a checkpoint at `step` or later exists; the exit code and stderr.
    SIGKILL goes to the whole process group: data-parallel ranks die with the run."""
    proc = subprocess.Popen([sys.executable, "-m", "train", *run], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=sig == signal.SIGKILL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        found = list((cwd / "outputs" / "runs").glob("*/*/checkpoints/last.ckpt"))
        if found and checkpoint_step(found[0]) >= step:
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)
            else:
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
    # one continuous curve: every logged step once, from 0 to the end (the last step included)
    steps = sorted(scalars(run)["train/loss"])
    assert steps == [*range(0, STEPS, 10), STEPS]
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
    assert record["status"] == "stopped" and f"resume='{run}'" in record["error"]
    assert f"resume='{run}'" in stderr and "Traceback" not in stderr
    longer = checkpoint_step(run / "checkpoints" / "last.ckpt") + 500
    run_cli(f"resume={run}", f"trainer.max_steps={longer}", cwd=tmp_path)
    assert metrics(run)["status"] == "completed" and metrics(run)["steps"] == longer


# mlp: 3200 training rows in batches of 64, so an epoch is 50 steps; checkpoints every 33 steps
# fall inside epochs. Dropout on: its random state must come back with the checkpoint.
MLP = ["task=mlp", "task.data.source=teacher", "task.data.rows=4000", "task.batch_size=64", "task.model.dropout=0.1",
       "optimizer=adam", "optimizer.lr=0.001", "trainer.max_steps=-1", "trainer.max_epochs=30", "seed=7",
       "callbacks.checkpoint.every_n_train_steps=33", "callbacks.checkpoint.min_interval_s=0", *QUIET]


def assert_same_mlp_run(resumed_dir, straight_dir):
    """Weights, optimiser state and test predictions equal bitwise; every curve point once;
    validation once per epoch, at the same steps."""
    resumed = torch.load(resumed_dir / "solution.pt", weights_only=True)
    expected = torch.load(straight_dir / "solution.pt", weights_only=True)
    assert resumed.keys() == expected.keys()
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name
    optimizers = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]["state"]
                  for d in (resumed_dir, straight_dir)]
    for key in optimizers[1]:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizers[0][key][name], optimizers[1][key][name])
    got, want = scalars(resumed_dir), scalars(straight_dir)
    for tag in ("train/loss", "val/mse"):
        assert sorted(got[tag]) == sorted(want[tag]), tag
        assert got[tag] == want[tag], tag
    epochs = len(want["val/mse"])
    assert sorted(want["val/mse"]) == list(range(50, 50 * epochs + 1, 50))  # once per epoch


def kill_and_resume(tmp_path, run: list[str], after_step: int):
    """The run straight, and killed once a checkpoint at `after_step` or later exists, then
    resumed: the two run folders and the step the killed run had reached."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    run_cli(*run, cwd=straight)
    returncode, _ = signal_after_checkpoint(killed, signal.SIGKILL, after_step, run=run)
    assert returncode == -signal.SIGKILL, "the run finished before it could be killed"
    folder = only_run(killed)
    killed_at = checkpoint_step(folder / "checkpoints" / "last.ckpt")
    proc = run_cli(f"resume={folder}", cwd=tmp_path)
    assert "unreliable" not in proc.stdout + proc.stderr  # Lightning's warning for loaders it cannot resume
    assert f"resuming at step {killed_at}:" in proc.stdout and "continues exactly" in (folder / "train.log").read_text()
    return folder, only_run(straight), killed_at


def test_mlp_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    resumed, straight, killed_at = kill_and_resume(tmp_path, MLP, 66)
    assert killed_at % 50, "the checkpoint fell on an epoch end"
    assert_same_mlp_run(resumed, straight)


@pytest.mark.slow
def test_mlp_killed_on_an_epoch_end_resumes_to_the_same_weights(tmp_path):
    resumed, straight, killed_at = kill_and_resume(tmp_path, [*MLP, "callbacks.checkpoint.every_n_train_steps=50"], 100)
    assert killed_at % 50 == 0
    assert_same_mlp_run(resumed, straight)


@pytest.mark.slow
def test_mlp_killed_mid_epoch_under_ddp_cpu_resumes_to_the_same_weights(tmp_path):
    run = [*MLP, "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_epochs=12"]
    resumed, straight, killed_at = kill_and_resume(tmp_path, run, 66)
    assert killed_at % 50
    expected = torch.load(straight / "solution.pt", weights_only=True)
    got = torch.load(resumed / "solution.pt", weights_only=True)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_eigen_killed_then_resumed_logs_the_same_curves_and_baseline(tmp_path):
    # the power-method baseline restarts from v's seeded start and must land on the same steps
    run = ["task=eigen", f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=500", "callbacks.checkpoint.every_n_train_steps=100",
           "callbacks.checkpoint.min_interval_s=0", "optimizer.lr=0.001", *QUIET]
    folder, straight, killed_at = kill_and_resume(tmp_path, run, after_step=300)
    assert killed_at < STEPS
    assert torch.equal(torch.load(folder / "solution.pt", weights_only=True)["v"], torch.load(straight / "solution.pt", weights_only=True)["v"])
    resumed, expected = scalars(folder), scalars(straight)
    for tag in ("baseline/angle_deg", "ref/angle_deg", "train/loss"):
        assert resumed[tag] == pytest.approx(expected[tag], rel=1e-6), tag


@pytest.mark.parametrize("precision", ["64-true", "32-true"])
def test_a_finished_run_continued_with_more_steps_equals_the_longer_run(tmp_path, precision):
    """max_steps=60, then resume= with max_steps=200: every weight and every logged loss of the
    straight 200-step run, bit for bit; in 64-true too (Lightning loads a checkpoint before it
    converts the module to float64, which rounded the resumed weights to float32)."""
    common = ["task=inverse", "optimizer=momentum", "optimizer.lr=0.01", f"trainer.precision={precision}",
              "trainer.log_every_n_steps=1", *QUIET]
    run_cli(*common, "trainer.max_steps=60", "hydra.run.dir=short", cwd=tmp_path)
    run_cli("resume=short", "trainer.max_steps=200", cwd=tmp_path)
    run_cli(*common, "trainer.max_steps=200", "hydra.run.dir=straight", cwd=tmp_path)
    resumed, straight = (torch.load(tmp_path / d / "solution.pt", weights_only=True) for d in ("short", "straight"))
    assert torch.equal(resumed["W"], straight["W"])
    assert scalars(tmp_path / "short")["train/loss"] == scalars(tmp_path / "straight")["train/loss"]
