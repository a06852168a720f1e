"""Every task on a CUDA GPU, in the precisions it supports. Skipped where torch sees no GPU."""

from __future__ import annotations

import pytest
import torch

from conftest import QUIET, metrics, only_run, run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TASKS = {
    "inverse": ["trainer.max_steps=100"],
    "linreg": ["task.data.source=linear", "task.data.features=4", "trainer.max_steps=200"],
    "lowrank": ["task.rank=2", "optimizer=lbfgs", "trainer.max_steps=20"],
    "mlp": ["task.data.source=teacher", "optimizer=adam", "optimizer.lr=0.003", "trainer.max_steps=-1", "trainer.max_epochs=20"],
}


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-mixed"])
def test_every_task_trains_on_the_gpu(tmp_path, task, precision):
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    run_cli(f"task={task}", "trainer=gpu", f"trainer.precision={precision}", *TASKS[task], *QUIET, cwd=tmp_path)
    record = metrics(only_run(tmp_path))
    assert record["status"] == "completed", record
    m = record["metrics"]
    if task == "mlp":
        assert m["test/mse"] < 0.5 * m["test/baseline_mse"]
    else:
        assert m["ref/rel_error"] < (0.05 if precision == "bf16-mixed" else 0.01), m


def test_lbfgs_in_double_precision_on_the_gpu_is_exact(tmp_path):
    run_cli("trainer=gpu", "trainer.precision=64-true", "optimizer=lbfgs", "task.matrix.source=random",
            "task.matrix.rows=64", "trainer.max_steps=30", *QUIET, cwd=tmp_path)
    assert metrics(only_run(tmp_path))["metrics"]["ref/rel_error"] < 1e-9


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_on_two_gpus(tmp_path):
    run_cli("task=mlp", "trainer=ddp", "trainer.devices=2", "trainer.max_steps=30", *QUIET, cwd=tmp_path)
    assert metrics(only_run(tmp_path))["status"] == "completed"


@pytest.mark.parametrize("task,sweep", [("inverse", ["optimizer=momentum", "optimizer.lr=0.05,0.2,0.5"]),
                                        ("mlp", ["optimizer=adam", "optimizer.lr=0.001,0.01", "trainer.max_steps=100"])])
def test_a_population_on_the_gpu_writes_what_the_sequential_sweep_writes(tmp_path, task, sweep):
    from test_population import assert_equivalent, both

    sequential, population, _ = both(tmp_path, f"task={task}", "trainer=gpu", "trainer.precision=64-true", *sweep)
    assert_equivalent(sequential, population, rel=1e-9)
