"""`mlp`: regression with a multi-layer perceptron, as seed notebook 002 builds one.

Rows are split train/validation/test by `task.data.seed`; features and target are
standardised with the training split's statistics only. The training loss is the MSE
in standardised units; the torchmetrics MSE/MAE/R² are in the target's own units.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from descend.data.loaders import GroupedBatches, TensorBatches
from descend.data.table import Scaling, TableConfig, table_source
from descend.errors import ConfigError, is_number, require_int
from descend.plots import curve
from descend.tasks.base import Task

log = logging.getLogger(__name__)

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


def check_model(model: Mapping[str, Any]) -> None:
    """task.model's activation, hidden sizes and dropout (those given), or a ConfigError naming the key."""
    activation, hidden, dropout = (model.get(key) for key in ("activation", "hidden", "dropout"))
    if "activation" in model and activation not in ACTIVATIONS:
        raise ConfigError(f"task.model.activation={activation!r} is unknown; use one of {', '.join(ACTIVATIONS)}")
    if "hidden" in model and (not isinstance(hidden, list) or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden)):
        raise ConfigError(f"task.model.hidden={hidden!r} must be a list of positive layer sizes, e.g. [64, 64]")
    if "dropout" in model and (not is_number(dropout) or not 0 <= dropout < 1):
        raise ConfigError(f"task.model.dropout={dropout} must lie in [0, 1)")


def build_mlp(inputs: int, hidden: list[int], activation: str, dropout: float) -> nn.Sequential:
    check_model({"hidden": hidden, "activation": activation, "dropout": dropout})
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), ACTIVATIONS[activation]()]
        layers += [nn.Dropout(dropout)] if dropout else []
        inputs = width
    return nn.Sequential(*layers, nn.Linear(inputs, 1))


def split_counts(fractions: list[float], rows: int | None) -> list[int] | None:
    """The train, validation and test sizes of `rows` rows (None where the number of rows is not yet
    known: a CSV's, before it is read), or a ConfigError naming task.split."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ConfigError(f"task.split={fractions} must be three non-negative fractions (train, val, test) summing to 1")
    if rows is None:
        return None
    counts = [int(rows * f) for f in fractions[1:]]
    train = rows - sum(counts)
    if train < 1 or (fractions[1] > 0 and counts[0] < 1) or (fractions[2] > 0 and counts[1] < 1):
        raise ConfigError(f"task.split={fractions} leaves an empty split of the {rows} rows; use more rows or other fractions")
    return [train, *counts]


def split_rows(rows: int, fractions: list[float], seed: int) -> list[torch.Tensor]:
    """Train, validation and test row indices, drawn by `seed`."""
    sizes = split_counts(fractions, rows)
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
    return list(torch.split(order, sizes))


class MLPTask(Task):
    device_caches = (*Task.device_caches, "_test_predictions")  # with the solution, after teardown

    @classmethod
    def check_config(cls, task: Mapping[str, Any]) -> None:
        super().check_config(task)
        rows = TableConfig(**task["data"]).rows_made() if "data" in task else None
        if "split" in task:
            split_counts(list(task["split"]), rows)
        if "batch_size" in task:
            require_int(task["batch_size"], "task.batch_size")
        check_model(task.get("model") or {})

    def __init__(
        self,
        data: dict[str, Any],
        model: dict[str, Any],
        split: list[float] = (0.8, 0.1, 0.1),
        batch_size: int = 64,
        shuffle: bool = True,
        standardize: bool = True,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        table = table_source(**data)
        self.noise_floor = table.noise_floor
        train, val, test = split_rows(len(table.target), list(split), data.get("seed", 0))
        x, y = table.features, table.target
        if data.get("path") or table.left_out or table.dropped:  # a user's table: say what predicts what
            log.info("mlp: %s; %d rows: %d train, %d val, %d test", table.describe(), len(table.target), len(train), len(val), len(test))
        scaling = Scaling.fit(x[train], y[train], enabled=standardize)  # the training split's statistics only
        for name, rows in (("train", train), ("val", val), ("test", test)):
            self.register_buffer(f"x_{name}", (x[rows] - scaling.x_mean) / scaling.x_std, persistent=False)
            self.register_buffer(f"y_{name}", (y[rows] - scaling.y_mean) / scaling.y_std, persistent=False)
        for name in ("x_mean", "x_std", "y_mean", "y_std"):
            self.register_buffer(name, getattr(scaling, name), persistent=False)
        self.net = build_mlp(x.shape[1], model.get("hidden", [64, 64]), model.get("activation", "tanh"), model.get("dropout", 0.0))
        from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, R2Score

        metrics = MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "r2": R2Score()})
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self._test_predictions: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def original_units(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.y_std + self.y_mean

    def original_features(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.x_std + self.x_mean

    def full_batch(self) -> tuple[torch.Tensor, ...]:
        return self.x_train, self.y_train

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return torch.mean((self(x) - y) ** 2)

    def _batches(self, x: torch.Tensor, y: torch.Tensor, train: bool) -> TensorBatches:
        return TensorBatches(
            (x, y),
            self.hparams.batch_size,
            shuffle=train and self.hparams.shuffle,
            seed_fn=lambda epoch: self.hparams.get("data", {}).get("seed", 0) * 100_003 + epoch,
            epoch_fn=lambda: self.current_epoch,
            rank=self.trainer.global_rank if train else 0,
            world_size=self.trainer.world_size if train else 1,
        )

    def train_dataloader(self) -> Any:
        return GroupedBatches(self._batches(self.x_train, self.y_train, train=True), self.step_plan())

    def val_dataloader(self) -> Any:
        return self._batches(self.x_val, self.y_val, train=False) if len(self.y_val) else []

    def test_dataloader(self) -> Any:
        return self._batches(self.x_test, self.y_test, train=False) if len(self.y_test) else []

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x, y = batch
        self.val_metrics.update(self.original_units(self(x)), self.original_units(y))

    def on_validation_epoch_end(self) -> None:
        self.log_stage_metrics(self.val_metrics.compute())
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self._test_predictions = []

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x, y = batch
        prediction = self.original_units(self(x))
        self._test_predictions.append(prediction.detach())
        self.test_metrics.update(prediction, self.original_units(y))

    def on_test_epoch_end(self) -> None:
        values = dict(self.test_metrics.compute())
        self.test_metrics.reset()
        # what predicting the training mean would score: the margin a model must beat
        y = self.original_units(self.y_test)
        values["test/baseline_mse"] = torch.mean((y - self.y_mean) ** 2)
        if self.noise_floor is not None:
            # on the module's device: NCCL cannot all-reduce a CPU tensor (sync_dist in log_stage_metrics)
            values["test/noise_floor"] = torch.tensor(float(self.noise_floor), device=self.device)
        self.log_stage_metrics(values)

    def solution(self) -> dict[str, torch.Tensor]:
        """The network's state_dict (keys net.*) and the test predictions in the target's units."""
        tensors = {k: v.detach() for k, v in self.state_dict().items() if k.startswith("net.")}
        if self._test_predictions:
            tensors["test_prediction"] = torch.cat(self._test_predictions)
            tensors["test_target"] = self.original_units(self.y_test)
            tensors["test_features"] = self.original_features(self.x_test)
        return tensors

    @torch.no_grad()
    def final_metrics(self) -> dict[str, float]:
        was_training = self.training
        self.eval()  # dropout off: the loss of the model as it will be used
        loss = self.loss(self.full_batch())
        self.train(was_training)
        return {"loss": float(loss)}

    @torch.no_grad()
    def images(self) -> dict[str, Any]:
        if self.x_train.shape[1] != 1:
            return {}
        was_training = self.training
        self.eval()
        x = torch.cat([self.x_train, self.x_val, self.x_test])
        y = torch.cat([self.y_train, self.y_val, self.y_test])
        picture = curve(self.original_features(x)[:, 0], self.original_units(y), self.original_units(self(x)), "prediction against truth")
        self.train(was_training)
        return {"prediction": picture}
