"""A GPU run's tensors follow its module between devices, tested on the CPU with the meta device.

Lightning's teardown moves a GPU run's module to the CPU before descend reads the final metrics.
Whatever a task caches or logs must move with it or be made on the module's device: a cache left
behind fails the final metrics with a device mismatch (and a run that said `completed` with no
metrics). Here a real fit fills every cache on the CPU, the module is moved to `meta` (a device
with shapes and no data) as teardown moves it, and everything must still work there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

TASKS = ["inverse", "linreg", "lowrank", "quadratic", "eigen", "mlp"]


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from descend.prechecks import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def fitted(task_name: str, tmp_path: Path, *overrides: str) -> Any:
    """A task trained for 20 steps on the CPU, logging every 5: its start (theory), logging steps
    (distances, the power method) and, for mlp, a test pass have run."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    from descend.build import build_task

    cfg = compose(f"task={task_name}", *overrides)
    pl.seed_everything(cfg.seed, verbose=False)
    task = build_task(cfg)
    trainer = pl.Trainer(max_steps=20, log_every_n_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task)
    if is_overridden("test_step", task):
        trainer.test(task, verbose=False)
    return task


def stray_tensors(value: Any, device: torch.device, where: str) -> list[str]:
    """Where tensors held in plain attributes (and the tuples, lists and dicts in them) are not on
    `device`; parameters, buffers and submodules are torch's to move."""
    if isinstance(value, torch.Tensor):
        return [] if value.device == device else [f"{where} on {value.device}"]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in stray_tensors(v, device, f"{where}[{k!r}]")]
    if isinstance(value, (list, tuple)):
        return [s for i, v in enumerate(value) for s in stray_tensors(v, device, f"{where}[{i}]")]
    return []


def attributes(module: torch.nn.Module) -> dict[str, Any]:
    torch_owned = ("_parameters", "_buffers", "_modules", "_trainer")
    return {k: v for k, v in vars(module).items() if k not in torch_owned}


@pytest.mark.parametrize("name", TASKS)
def test_caches_follow_the_module_and_final_metrics_survive_a_move(name, tmp_path):
    task = fitted(name, tmp_path)
    expected = set(task.final_metrics())
    assert any(k.startswith("ref/") for k in expected) or name == "mlp", expected

    task.to("meta")  # as Lightning's teardown moves a GPU run's module to the CPU
    assert stray_tensors(attributes(task), torch.device("meta"), name) == []
    loss = task.loss(task.full_batch())
    distances = task.distances(loss)  # what a logging step and the final metrics compute
    assert {k: v.device.type for k, v in distances.items()} == {k: "meta" for k in distances}
    if name == "eigen":  # its power method, from the start vector, on the device
        assert task.power_iterate(task.global_step + 3).device.type == "meta"

    task.to_empty(device="cpu")  # and back to a device with data (values arbitrary, devices checked)
    assert set(task.final_metrics()) == expected


def test_a_float64_cache_keeps_its_dtype_when_the_module_is_converted(tmp_path):
    task = fitted("inverse", tmp_path)
    reference = task.cached_reference()["W"]
    task.half()  # a precision plugin's conversion: parameters change dtype, the closed form must not
    assert task.cached_reference()["W"].dtype == torch.float64
    assert torch.equal(task.cached_reference()["W"], reference)


def test_what_mlp_logs_with_sync_dist_is_on_the_modules_device(tmp_path):
    """NCCL all-reduces only GPU tensors: a CPU tensor logged with sync_dist=True fails under
    trainer=ddp on GPUs (gloo, on the CPU, accepts it, so a CPU run cannot show this)."""
    task = fitted("mlp", tmp_path, "task.data.source=teacher", "task.data.rows=200")
    assert task.noise_floor is not None  # generated data: the noise floor is logged
    task.to("meta")
    # torchmetrics cannot compute on meta: their values stand in, on the module's device
    task.test_metrics.compute = lambda: {"test/mse": torch.zeros((), device=task.device)}
    handed: dict[str, torch.Tensor] = {}
    task.log_stage_metrics = handed.update
    task.on_test_epoch_end()
    assert "test/noise_floor" in handed
    assert {k: v.device.type for k, v in handed.items()} == {k: "meta" for k in handed}


def test_a_completed_run_whose_final_metrics_fail_is_failed_not_completed():
    from descend.results import final_metrics, new_record

    class Broken:
        def final_metrics(self):
            raise RuntimeError("Expected all tensors to be on the same device")

    record = dict(new_record("inverse"), status="completed")
    assert final_metrics(Broken(), record) == {}
    assert record["status"] == "failed" and "same device" in record["error"] and record["traceback"]
    diverged = dict(new_record("inverse"), status="diverged", error="training diverged at step 7")
    final_metrics(Broken(), diverged)
    assert diverged["status"] == "diverged" and diverged["error"] == "training diverged at step 7"


def test_population_hyper_parameters_and_read_back_follow_the_parameters_device():
    """The members' hyper-parameters are copied to the parameters' device in one transfer, and
    not again while unchanged; the members' logged values are read back in one transfer."""
    from descend.population.optimizers import VectorisedOptimizer
    from descend.stepping import MetricBuffer, read_back

    holders = [torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=lr, momentum=0.9) for lr in (0.1, 0.2)]
    stacked = torch.nn.Parameter(torch.zeros(2, 3, device="meta"))
    update = VectorisedOptimizer(holders, [stacked])
    assert {name: h.device.type for name, h in update.h.items()} == {name: "meta" for name in update.h}
    before = update.h
    update.refresh()
    assert update.h is before  # unchanged values: no copy
    holders[1].param_groups[0]["lr"] = 0.05
    update.refresh()
    assert update.h is not before and update.h["lr"].device.type == "meta"

    buffers = [MetricBuffer(), MetricBuffer()]
    for i, buffer in enumerate(buffers):
        buffer.add(10, {"train/loss": torch.tensor(float(i)), "lr": 0.1})
    read_back(buffers)
    assert [b.pending for b in buffers] == [[(10, {"train/loss": 0.0, "lr": 0.1})], [(10, {"train/loss": 1.0, "lr": 0.1})]]


def test_lbfgs_with_loss_scaling_on_a_gpu_is_refused_before_training(monkeypatch):
    """Lightning's GradScaler path refuses LBFGS at the first step, with a traceback; descend says
    so in one line first. Checked here with torch made to see a GPU (validate reads no device)."""
    from descend.build import validate
    from descend.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="optimizer=lbfgs cannot run with trainer.precision=16-mixed on a GPU"):
        validate(compose("optimizer=lbfgs", "trainer=gpu", "trainer.precision=16-mixed"))
    validate(compose("optimizer=lbfgs", "trainer=gpu", "trainer.precision=bf16-mixed"))  # no scaler: allowed
    validate(compose("optimizer=adam", "trainer=gpu", "trainer.precision=16-mixed"))
    validate(compose("optimizer=lbfgs", "trainer=cpu", "trainer.precision=16-mixed"))  # no scaler on the CPU
