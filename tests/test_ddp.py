"""Data-parallel training in 2 CPU processes (gloo): same numbers as 1 process, one folder, sweeps work."""

from __future__ import annotations

import pytest
import torch

from conftest import QUIET, metrics, only_run, run_cli, run_dirs

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")

LINREG = ["task=linreg", "task.data.source=linear", "task.data.rows=64", "task.data.features=3", "task.data.noise=0.1",
          "trainer.max_steps=40", *QUIET]
MLP = ["task=mlp", "task.data.rows=400", "trainer.max_steps=30", "optimizer=adam", *QUIET]


def test_ddp_linreg_matches_one_process_and_writes_one_folder(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir(), ddp.mkdir()
    run_cli(*LINREG, cwd=single)
    run_cli(*LINREG, "trainer=ddp_cpu", cwd=ddp)
    run = only_run(ddp)  # exactly one run folder: the second rank made none of its own
    assert not (ddp / "outputs" / "multirun").exists()
    one, two = metrics(only_run(single)), metrics(run)
    assert two["status"] == "completed" and two["steps"] == 40
    for key in ("loss", "ref/rel_error"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5), key
    w_one = torch.load(only_run(single) / "solution.pt", weights_only=True)["w"]
    w_two = torch.load(run / "solution.pt", weights_only=True)["w"]
    torch.testing.assert_close(w_two, w_one, rtol=1e-5, atol=1e-6)


def test_ddp_inside_a_two_job_multirun(tmp_path):
    run_cli("-m", *MLP, "trainer=ddp_cpu", "optimizer.lr=0.01,0.02", cwd=tmp_path)
    assert not run_dirs(tmp_path), "a rank wrote a stray run folder"
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and [metrics(j)["status"] for j in jobs] == ["completed", "completed"]
    assert (sweep / "summary.csv").exists()
    # the sharded mini-batches add up to the single process's batches: same test error
    single = tmp_path / "single"
    single.mkdir()
    run_cli(*MLP, "optimizer.lr=0.01", cwd=single)
    expected = metrics(only_run(single))["metrics"]["test/mse"]
    assert metrics(jobs[0])["metrics"]["test/mse"] == pytest.approx(expected, rel=1e-4)


def test_torchrun_with_a_named_run_folder(tmp_path):
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "train", *MLP,
               "trainer=ddp_cpu", "optimizer.lr=0.01", "hydra.run.dir=outputs/runs/torchrun"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in (tmp_path / "outputs" / "runs").iterdir()] == ["torchrun"]  # both ranks, one folder
    assert metrics(tmp_path / "outputs" / "runs" / "torchrun")["status"] == "completed"
