"""The private Lightning names descend relies on (descend/lightning_internals.py) still exist in the
installed Lightning, and do what descend uses them for."""

from __future__ import annotations

import torch

from descend import lightning_internals


def instances() -> dict[str, object]:
    """An object of each owner in PRIVATE_NAMES: several of the names are set in __init__."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.core.optimizer import LightningOptimizer
    from torch.utils.tensorboard import SummaryWriter

    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    return {
        "lightning.pytorch.core.optimizer.LightningOptimizer": LightningOptimizer(torch.optim.SGD([torch.zeros(1)], lr=0.1)),
        "lightning.pytorch.trainer.trainer.Trainer": trainer,
        "lightning.pytorch.trainer.connectors.checkpoint_connector._CheckpointConnector": trainer._checkpoint_connector,
        "lightning.pytorch.callbacks.ModelCheckpoint": ModelCheckpoint(every_n_train_steps=5),
        "torch.utils.tensorboard.SummaryWriter": SummaryWriter,
    }


def test_every_private_name_is_there():
    objects = instances()
    for owner, name in lightning_internals.PRIVATE_NAMES:
        assert hasattr(objects[owner], name), f"{owner}.{name} is gone: see descend/lightning_internals.py"
    assert lightning_internals.checkpoint_every_n_steps(objects["lightning.pytorch.callbacks.ModelCheckpoint"]) == 5


def test_a_counted_step_advances_the_trainers_global_step(tmp_path):
    """The fit loop's step count follows counted_step, as it follows LightningOptimizer.step."""
    import lightning.pytorch as pl

    class Manual(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.w = torch.nn.Parameter(torch.ones(2))

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            raw = optimizer.optimizer
            for _ in range(3):  # three optimiser steps in one batch, as descend's step groups
                raw.zero_grad()
                (self.w ** 2).sum().backward()
                lightning_internals.counted_step(optimizer, raw.step)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(2, 1), batch_size=1)  # two batches

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    module = Manual()
    trainer.fit(module)
    assert trainer.global_step == 6
    torch.testing.assert_close(module.w.detach(), torch.full((2,), 0.8 ** 6))
    assert "epoch" in lightning_internals.dump_checkpoint(trainer) and "loops" in lightning_internals.dump_checkpoint(trainer)


def test_the_hparams_name_is_what_lightning_stores():
    import lightning.pytorch as pl

    class Saved(pl.LightningModule):
        def __init__(self, lr: float = 0.1):
            super().__init__()
            self.save_hyperparameters()

    assert lightning_internals.hparams_name(Saved()) == "kwargs"
    assert lightning_internals.hparams_name(pl.LightningModule()) is None
