"""One process per run folder: a second resume= (or a second command on one folder) of a run that
is still training is refused naming the process; a lock left by a killed run is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

from conftest import QUIET, metrics, one_line_error, run_cli

LONG = ["trainer.max_steps=100000000", "callbacks.checkpoint.every_n_train_steps=200", "callbacks.checkpoint.min_interval_s=0",
        "logger=csv", *QUIET]


def test_a_second_process_on_a_running_runs_folder_is_refused_naming_it_and_a_killed_runs_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "train", *LONG, f"hydra.run.dir={run}"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (run / "checkpoints" / "last.ckpt").is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert (run / "descend.lock").is_file() and first.poll() is None
        hydra_files = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}
        logs = sorted(p.name for p in run.rglob("*") if p.is_file() and "checkpoints" not in p.parts)

        for command in ([f"resume={run}", "trainer.max_steps=200000000"], [*LONG, f"hydra.run.dir={run}"]):
            line = one_line_error(run_cli(*command, cwd=tmp_path, expect=2))
            assert f"in use by pid {first.pid} on host " in line and "python -m train" in line and f"kill {first.pid}" in line
        # the refused commands wrote nothing: the record and the files are the first process's
        assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == hydra_files
        assert sorted(p.name for p in run.rglob("*") if p.is_file() and "checkpoints" not in p.parts) == logs
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)

    assert (run / "descend.lock").is_file()  # SIGKILL leaves it: stale, its pid is gone
    step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    proc = run_cli(f"resume={run}", f"trainer.max_steps={step + 50}", cwd=tmp_path)
    assert f"was left by pid {first.pid}" in proc.stdout and "no longer running; taking it over" in proc.stdout
    assert metrics(run)["status"] == "completed" and metrics(run)["steps"] == step + 50
    assert not (run / "descend.lock").exists()  # released at the end
    assert not os.path.exists(tmp_path / "outputs")  # nothing written elsewhere either
