"""The progress bar counts the run's optimiser steps against its last step, resumed runs too."""

from __future__ import annotations

from types import SimpleNamespace

from descend.callbacks import StepProgressBar


def fake_trainer(max_steps: int, max_epochs: int, steps_per_epoch: int, global_step: int = 0) -> SimpleNamespace:
    return SimpleNamespace(max_steps=max_steps, max_epochs=max_epochs, global_step=global_step, current_epoch=0,
                           train_dataloader=SimpleNamespace(steps=steps_per_epoch), is_global_zero=True, loggers=[], progress_bar_metrics={})


def test_the_total_is_the_step_the_run_ends_at():
    bar = StepProgressBar()
    assert bar.run_total(fake_trainer(100, -1, 100)) == 100  # not the "epoch" of 100 steps over and over
    assert bar.run_total(fake_trainer(-1, 50, 13)) == 650  # mlp: 50 epochs of 13 mini-batches
    assert bar.run_total(fake_trainer(100, 50, 13)) == 100  # whichever limit comes first
    assert bar.run_total(fake_trainer(-1, -1, 13)) is None  # max_time only: no total, tqdm shows ?


def test_a_resumed_run_starts_at_its_step_and_counts_its_rate_from_there(capsys):
    bar = StepProgressBar()
    trainer = fake_trainer(200000, -1, 100, global_step=194100)
    bar._trainer = trainer
    bar.on_train_start(trainer)
    bar.on_train_batch_start(trainer)
    tqdm = bar.train_progress_bar
    assert (tqdm.n, tqdm.total, tqdm.initial) == (194100, 200000, 194100)  # tqdm's rate: (n − initial) / elapsed
    trainer.global_step = 194200
    bar.on_train_batch_end(trainer, SimpleNamespace(step_state=SimpleNamespace(loss=None)), None, None, 0)
    assert tqdm.n == 194200
    bar.on_train_end(trainer)
    assert "194200/200000" in capsys.readouterr().out


def test_without_callbacks_the_bar_is_still_the_runs(tmp_path):
    """callbacks=none leaves no bar in the callbacks: descend's is added, not Lightning's `Epoch 0: 1/100`."""
    from conftest import run_cli

    proc = run_cli("callbacks=none", "trainer.enable_progress_bar=true", cwd=tmp_path)
    assert "100/100" in proc.stdout and "Epoch 0" not in proc.stdout
