"""The sharpness callback: Lanczos on Hessian-vector products against eigvalsh of autograd's
Hessian, the logged curves and threshold, and a run's numbers unchanged with it on."""

from __future__ import annotations

import types

import pytest
import torch

from conftest import QUIET, metrics, only_run, run_cli, scalars
from descend.callbacks.sharpness import stability_threshold, top_hessian_eigenvalue
from test_stepping import plain_inverse_loop, solution_w
from test_theory import autograd_hessian, tasks


@pytest.mark.parametrize("name", ["inverse", "linreg", "linreg_standardised", "quadratic"])
def test_lanczos_is_the_top_eigenvalue_of_a_quadratic_tasks_hessian(name):
    task = tasks()[name].double()
    block, _ = task.quadratic_form()
    top = float(torch.linalg.eigvalsh(block)[-1])
    value, products = top_hessian_eigenvalue(lambda: task.loss(task.full_batch()), list(task.parameters()))
    assert value == pytest.approx(top, rel=1e-6)
    assert products <= block.shape[0] + 1  # the Krylov space is the block's: exact within its size


def test_lanczos_is_the_top_eigenvalue_of_an_mlps_hessian():
    from descend.tasks.mlp import MLPTask

    torch.manual_seed(0)
    task = MLPTask(data={"source": "teacher", "rows": 60, "features": 3, "hidden": 4, "noise": 0.1},
                   model={"hidden": [6], "activation": "tanh", "dropout": 0.0}).double()
    hessian = autograd_hessian(task)
    top = float(torch.linalg.eigvalsh(hessian)[-1])
    value, _ = top_hessian_eigenvalue(lambda: task.loss(task.full_batch()), list(task.parameters()), iterations=60, tol=1e-10)
    assert value == pytest.approx(top, rel=1e-6)
    before = [p.grad for p in task.parameters()]
    assert all(g is None for g in before)  # double backward by autograd.grad: .grad untouched


@pytest.mark.parametrize(("kwargs", "threshold"), [
    ({"lr": 0.5}, 4.0),
    ({"lr": 0.5, "momentum": 0.9}, 3.8 / 0.5),
    ({"lr": 0.5, "momentum": 0.9, "nesterov": True}, 3.8 / 2.8 / 0.5),
    ({"lr": 0.5, "weight_decay": 0.1}, 4.0 - 0.1),
])
def test_the_threshold_is_the_optimisers_own(kwargs, threshold):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], **kwargs)
    assert stability_threshold(optimizer) == pytest.approx(threshold)
    assert stability_threshold(torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])) is None


def test_a_quadratic_runs_sharpness_is_its_lambda_max_beside_its_threshold(tmp_path):
    run_cli("task=quadratic", "optimizer=momentum", "optimizer.lr=0.3", "trainer.precision=64-true", "trainer.max_steps=45",
            "callbacks.sharpness.every_n_steps=20", *QUIET, cwd=tmp_path)
    run = only_run(tmp_path)
    series = scalars(run)
    lam = metrics(run)["theory"]["eigenvalue_max"]
    assert sorted(series["curvature/sharpness"]) == [0, 20, 40, 45]  # and at the end
    for value in series["curvature/sharpness"].values():
        assert value == pytest.approx(lam, rel=1e-6)
    assert all(value == pytest.approx(3.8 / 0.3, rel=1e-6) for value in series["curvature/threshold"].values())  # (2+2β)/lr (TensorBoard keeps float32)
    assert set(series["curvature/threshold"]) == set(series["curvature/sharpness"])
    assert chart_titles(run)["sharpness and its stability threshold"] == ["^stability/curvature/(sharpness|threshold)$"]


def chart_titles(run) -> dict[str, list[str]]:
    """The run's custom-scalars charts, {title: tag patterns}, read back from its event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    events = EventAccumulator(str(run), size_guidance={"tensors": 0})
    events.Reload()
    (written,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(written.tensor_proto.string_val[0])
    return {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}


def test_sharpness_leaves_the_run_bitwise_as_the_plain_loop(tmp_path):
    run_cli("optimizer=momentum", "optimizer.lr=0.1", "scheduler=cosine", "trainer.max_steps=500",
            "callbacks.sharpness.every_n_steps=7", *QUIET, cwd=tmp_path)
    assert torch.equal(solution_w(tmp_path), plain_inverse_loop(500, 0.1, momentum=0.9, cosine=True))
    assert len(scalars(only_run(tmp_path))["curvature/sharpness"]) == 73  # 0, 7, …, 497 and 500


def test_sharpness_leaves_dropout_and_shuffling_as_they_were(tmp_path):
    """An mlp with dropout and shuffled minibatches draws random numbers at every step: with the
    callback on (its forward passes draw too) the run is the same to the bit."""
    runs = {}
    for every in (0, 5):
        cwd = tmp_path / str(every)
        cwd.mkdir()
        run_cli("task=mlp", "task.data.rows=200", "task.model.hidden=[16]", "task.model.dropout=0.2", "task.batch_size=32",
                "trainer.max_steps=40", "trainer.log_every_n_steps=1", f"callbacks.sharpness.every_n_steps={every}", *QUIET, cwd=cwd)
        runs[every] = only_run(cwd)
    assert scalars(runs[0])["train/loss"] == scalars(runs[5])["train/loss"]
    solutions = [torch.load(run / "solution.pt", weights_only=True) for run in runs.values()]
    assert all(torch.equal(solutions[0][k], solutions[1][k]) for k in solutions[0])
    assert "curvature/sharpness" in scalars(runs[5]) and "curvature/sharpness" not in scalars(runs[0])


def test_the_edge_of_stability_sweep_draws_each_jobs_sharpness_beside_2_over_lr(tmp_path):
    run_cli("-m", "experiment=edge_of_stability", "optimizer.lr=0.2,0.4", "trainer.max_steps=60", *QUIET, cwd=tmp_path)
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    summary = (sweep / "summary.md").read_text()
    rows = [line.split(" | ") for line in summary.splitlines() if line.startswith("| 0") and line.count("|") == 7]
    assert [row[0] for row in rows] == ["| 00_optimizer.lr=0.2", "| 01_optimizer.lr=0.4"]
    assert [float(row[4]) for row in rows] == [10.0, 5.0]  # the threshold column: 2/lr
    for job, row in zip(sorted(p for p in sweep.iterdir() if p.is_dir()), rows):
        series = scalars(job)["curvature/sharpness"]
        assert sorted(series) == [0, 10, 20, 30, 40, 50, 60]
        assert float(row[3]) == pytest.approx(series[60], rel=1e-3)  # the last sharpness, as logged
    assert (sweep / "sharpness.png").stat().st_size > 10_000


def test_one_jobs_config_answers_for_a_sweep_only_where_callbacks_cannot_differ(tmp_path, monkeypatch):
    """theory_plots.alike_callbacks: a summary reads one job's config for all only where the jobs'
    overrides differ in dotted values outside `callbacks` (a learning-rate sweep); a group choice
    or a callbacks override makes it read each job's own (here: one on, one off)."""
    from descend.theory_plots import alike_callbacks, sharpness_curves

    def rows(*overrides: str) -> list[dict]:
        return [{"job": f"{i:02d}", "overrides": o} for i, o in enumerate(overrides)]

    assert alike_callbacks(rows("optimizer.lr=0.1 seed=1", "optimizer.lr=0.2 seed=1")) is False  # seed: no dot
    assert alike_callbacks(rows("optimizer.lr=0.1", "optimizer.lr=0.2 optimizer.momentum=0.9"))
    for other in ("callbacks.sharpness.every_n_steps=0", "+callbacks.x.y=1", "task=mlp", "+experiment=edge_of_stability",
                  "hydra/launcher=basic", "~callbacks.images"):
        assert not alike_callbacks(rows("optimizer.lr=0.1", f"optimizer.lr=0.2 {other}")), other
    # each job's own config where they may differ: job 00 measured sharpness and is read back, 01 not
    for job, steps in (("00", 10), ("01", 0)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "config.yaml").write_text(f"callbacks:\n  sharpness:\n    every_n_steps: {steps}\n")
    read: list[str] = []
    monkeypatch.setattr("descend.api.load", lambda folder: read.append(folder.name) or types.SimpleNamespace(curves={}))
    sharpness_curves(tmp_path, rows("callbacks.sharpness.every_n_steps=10", "callbacks.sharpness.every_n_steps=0"))
    assert read == ["00"]
    read.clear()  # alike (a learning-rate sweep): job 00's answer stands for both
    sharpness_curves(tmp_path, rows("optimizer.lr=0.1", "optimizer.lr=0.2"))
    assert read == ["00", "01"]
