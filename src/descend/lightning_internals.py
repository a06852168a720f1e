"""The few places descend reaches past Lightning's public API, each behind a name that says why.

descend's step runs many optimiser steps per Lightning batch (stepping.py) and a population runs
many runs in one module (population/): both need what Lightning does inside
`LightningOptimizer.step` and `ModelCheckpoint`, without the closure and per-call work that make
a small problem's step several times slower. Those insides are private, so they are reached here
only, `lightning` is capped in pyproject.toml, and tests/test_lightning_internals.py fails on a
Lightning release where one of them has gone (`PRIVATE_NAMES` lists what it checks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# (class, attribute) pairs that descend uses and Lightning does not promise to keep
PRIVATE_NAMES = (
    ("lightning.pytorch.core.optimizer.LightningOptimizer", "_on_before_step"),
    ("lightning.pytorch.core.optimizer.LightningOptimizer", "_on_after_step"),
    ("lightning.pytorch.trainer.trainer.Trainer", "_checkpoint_connector"),
    ("lightning.pytorch.trainer.connectors.checkpoint_connector._CheckpointConnector", "dump_checkpoint"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_every_n_train_steps"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_last_global_step_saved"),
    ("torch.utils.tensorboard.SummaryWriter", "_get_file_writer"),
)


def counted_step(optimizer: Any, step: Callable[..., Any], *args: Any) -> Any:
    """`step(*args)` (a raw optimiser's step) with what `LightningOptimizer.step` does around it:
    the fit loop's step progress, hence `trainer.global_step`, without its closure wrapper.

    `optimizer`: the `LightningOptimizer` that `LightningModule.optimizers()` returns. A plain
    call, not a context manager: it runs at every step of problems whose step takes microseconds."""
    optimizer._on_before_step()
    result = step(*args)
    optimizer._on_after_step()
    return result


def dump_checkpoint(trainer: Any) -> dict[str, Any]:
    """The checkpoint dict Lightning would save now (loops, callbacks, optimiser and precision
    states), for a population to split into one checkpoint per member."""
    return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def checkpoint_every_n_steps(callback: Any) -> int:
    """A ModelCheckpoint's `every_n_train_steps` (0: none): a group of steps ends at its multiples."""
    return int(callback._every_n_train_steps or 0)


def mark_checkpoint_saved(callback: Any, step: int) -> None:
    """Tell a ModelCheckpoint that step `step` is saved, so its end-of-training save is not repeated."""
    callback._last_global_step_saved = step


def tensorboard_file_writer(logger: Any) -> Any:
    """The TensorBoardLogger's event-file writer: one Summary proto of many tags is one record,
    where `log_metrics` writes one record per tag (stepping.log_row)."""
    return logger.experiment._get_file_writer()


def hparams_name(module: Any) -> str | None:
    """The name under which `save_hyperparameters` found the module's hyper-parameters, which
    Lightning's own checkpoint stores as `hparams_name` (None where none were saved)."""
    return getattr(module, "_hparams_name", None)


def epoch_ends_after_this_batch(trainer: Any) -> bool:
    """Whether the running batch is its epoch's last, so the epoch's validation runs next."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
