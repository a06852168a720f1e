"""descend's step (several optimiser steps per Lightning batch) ends bitwise where a plain
PyTorch loop ends, and every step event still happens at its exact step."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import QUIET, metrics, only_run, run_cli, scalars, tensorboard_events
from descend.stepping import group_sizes

SEED_LR = 0.46051701859880914


def plain_inverse_loop(steps: int, lr: float, momentum: float = 0.0, cosine: bool = False, clip: float | None = None) -> torch.Tensor:
    """The seed notebook's loop, written by hand: seed, torch.rand init, SGD, optional extras."""
    import lightning.pytorch as pl

    pl.seed_everything(314, verbose=False)
    m = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    eye = torch.eye(4)
    w = torch.nn.Parameter(torch.rand(4, 4))
    optimizer = torch.optim.SGD([w], lr=lr, momentum=momentum)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps) if cosine else None
    for _ in range(steps):
        loss = torch.mean((w @ m - eye) ** 2)
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([w], clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return w.detach()


def solution_w(cwd) -> torch.Tensor:
    return torch.load(only_run(cwd) / "solution.pt", weights_only=True)["W"]


def test_default_run_equals_the_plain_loop_bitwise(tmp_path):
    run_cli("trainer.max_steps=2000", *QUIET, cwd=tmp_path)
    assert torch.equal(solution_w(tmp_path), plain_inverse_loop(2000, SEED_LR))
    assert metrics(only_run(tmp_path))["steps"] == 2000


def test_momentum_with_cosine_schedule_equals_the_plain_loop_bitwise(tmp_path):
    run_cli("optimizer=momentum", "optimizer.lr=0.1", "scheduler=cosine", "trainer.max_steps=2000", *QUIET, cwd=tmp_path)
    assert torch.equal(solution_w(tmp_path), plain_inverse_loop(2000, 0.1, momentum=0.9, cosine=True))


def test_gradient_clipping_equals_clip_grad_norm_bitwise(tmp_path):
    # a clip below the gradient norm of the first steps, so clipping changes the trajectory
    run_cli("trainer.gradient_clip_val=0.05", "trainer.max_steps=500", *QUIET, cwd=tmp_path)
    assert torch.equal(solution_w(tmp_path), plain_inverse_loop(500, SEED_LR, clip=0.05))
    assert not torch.equal(plain_inverse_loop(500, SEED_LR, clip=0.05), plain_inverse_loop(500, SEED_LR))


def test_events_fall_on_their_exact_steps(tmp_path):
    # intervals that do not divide each other or the run: groups must still end at each event
    run_cli("trainer.max_steps=173", "trainer.log_every_n_steps=7", "callbacks.images.every_n_steps=30",
            "callbacks.images.max_share=null", "callbacks.checkpoint.every_n_train_steps=45",
            "callbacks.checkpoint.min_interval_s=0", "task.steps_per_epoch=40", *QUIET, cwd=tmp_path)
    run = only_run(tmp_path)
    series = scalars(run)
    for tag in ("train/loss", "train/grad_norm", "ref/rel_error", "lr-SGD"):
        assert sorted(series[tag]) == [*range(0, 173, 7), 173], tag  # and the last step, where final/* is
    images = [e.step for e in tensorboard_events(run).Images("images/W·M")]
    assert images == [0, 30, 60, 90, 120, 150, 173]
    assert metrics(run)["steps"] == 173
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 173


def test_one_step_per_batch_gives_the_same_run(tmp_path):
    grouped, single = tmp_path / "grouped", tmp_path / "single"
    grouped.mkdir(), single.mkdir()
    common = ["optimizer=adam", "scheduler=step", "trainer.max_steps=300", "trainer.log_every_n_steps=5", *QUIET]
    run_cli(*common, cwd=grouped)
    run_cli(*common, "steps_per_batch=1", cwd=single)
    assert torch.equal(solution_w(grouped), solution_w(single))
    assert scalars(only_run(grouped))["train/loss"] == scalars(only_run(single))["train/loss"]


def test_divergence_inside_a_batch_is_reported_at_its_exact_step(tmp_path):
    # lr 2.5 on the seed inverse: |1 − lr·λ| > 1, the loss grows every step until it overflows
    proc = run_cli("optimizer.lr=2.5", "trainer.max_steps=1000", "trainer.log_every_n_steps=1", *QUIET, cwd=tmp_path, expect=3)
    run = only_run(tmp_path)
    record = metrics(run)
    loss = scalars(run)["train/loss"]
    step = record["steps"]
    assert f"training diverged at step {step} " in proc.stderr
    assert max(loss) == step  # nothing logged after the step that diverged
    # the first step whose loss passed a million times the first (it grows, so every earlier one is below)
    assert loss[step] > 1e6 * max(loss[0], 1.0) or not math.isfinite(loss[step])
    assert all(loss[s] <= 1e6 * max(loss[0], 1.0) for s in range(step))
    assert record["metrics"]["loss"] == pytest.approx(loss[step], rel=1e-6)


@pytest.mark.parametrize(
    ("start", "end", "intervals", "steps_per_batch", "expected"),
    [
        (0, 100, [20, 50], 100, [20, 20, 10, 10, 20, 20]),
        (0, 10, [], 4, [4, 4, 2]),
        (37, 60, [25], 100, [13, 10]),
        (0, 5, [1], 100, [1, 1, 1, 1, 1]),
        (5, 5, [3], 10, []),
    ],
)
def test_group_sizes_end_on_every_event(start, end, intervals, steps_per_batch, expected):
    assert group_sizes(start, end, intervals, steps_per_batch) == expected


def test_buffered_rows_get_log10_companions_where_a_logarithm_exists():
    from descend.stepping import MetricBuffer

    class Recorder:  # any Lightning logger but TensorBoard gets log_metrics
        def __init__(self):
            self.rows = {}

        def log_metrics(self, row, step):
            self.rows[step] = row

    buffer, recorder = MetricBuffer(), Recorder()
    buffer.add(0, {"train/loss": torch.tensor(100.0), "ref/excess_loss": torch.tensor(-1e-9, dtype=torch.float64), "lr-SGD": 0.1})
    buffer.add(10, {"train/loss": torch.tensor(0.0), "ref/rel_error": torch.tensor(1e-3)})
    buffer.add(20, {"train/loss": torch.tensor(math.inf)})
    buffer.flush([recorder])
    assert recorder.rows[0] == {"train/loss": 100.0, "train/log10_loss": 2.0, "ref/excess_loss": -1e-9, "lr-SGD": 0.1}
    # an exact zero has no logarithm: no point, rather than a floor that would squash the axis
    assert recorder.rows[10] == {"train/loss": 0.0, "ref/rel_error": pytest.approx(1e-3), "ref/log10_rel_error": pytest.approx(-3.0)}
    assert recorder.rows[20] == {"train/loss": math.inf, "train/log10_loss": math.inf}
