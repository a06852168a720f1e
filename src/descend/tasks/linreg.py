"""`linreg`: fit y = X·w + b by mean squared error, as seed notebook 003 does.

A real table's columns come in their own units (areas in the hundreds, prices in the tens of
thousands), where float32 gradient descent or LBFGS stalls far from the least-squares answer.
So a table read from a file is standardised (`task.standardize: auto`): training runs on
(x - mean) / std against (y - mean) / std, the loss is the MSE in those units, and the saved and
compared weights and bias are mapped back to the table's own units. Generated data is left as
it is, so the seed example keeps its exact trajectory.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from descend.data.table import Scaling, TableConfig, table_source
from descend.errors import ConfigError
from descend.tasks.base import Task, initial

log = logging.getLogger(__name__)


STANDARDIZE = (True, False, "auto")


class LinRegTask(Task):
    device_caches = (*Task.device_caches, "_least_squares")

    @classmethod
    def check_config(cls, task: Mapping[str, Any]) -> None:
        super().check_config(task)
        if "data" in task:
            TableConfig(**task["data"]).rows_made()
        if "standardize" in task and task["standardize"] not in STANDARDIZE:
            raise ConfigError(f"task.standardize={task['standardize']!r} must be auto (files only), true or false")

    def __init__(
        self,
        data: dict[str, Any],
        bias: bool = True,
        init: str = "zeros",
        predict_at: list[float] | None = None,
        standardize: bool | str = "auto",
        **base: Any,
    ) -> None:
        super().__init__(**base)
        table = table_source(**data)
        enabled = bool(data.get("path")) if standardize == "auto" else standardize
        scaling = Scaling.fit(table.features, table.target, enabled=enabled, center=bias)
        self.standardized = enabled
        self.feature_names = table.feature_names
        if data.get("path"):
            log.info("linreg: %s%s", table.describe(), "; trained standardised, w and b in the table's units" if enabled else "")
        self.register_buffer("features", (table.features - scaling.x_mean) / scaling.x_std, persistent=False)
        self.register_buffer("target", (table.target - scaling.y_mean) / scaling.y_std, persistent=False)
        for name in ("x_mean", "x_std", "y_mean", "y_std"):
            self.register_buffer(name, getattr(scaling, name), persistent=False)
        self.weight = torch.nn.Parameter(initial(init, table.features.shape[1]))
        self.bias = torch.nn.Parameter(initial(init, 1)) if bias else None
        self._least_squares: torch.Tensor | None = None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction for training-scale features (standardised ones when standardised)."""
        y = x @ self.weight
        return y + self.bias if self.bias is not None else y

    def full_batch(self) -> tuple[torch.Tensor, ...]:
        return self.features, self.target

    def training_batch(self) -> tuple[torch.Tensor, ...]:
        # Data-parallel runs give each rank an equal shard of the rows; DDP averages the
        # gradients of the shards' mean losses, which is the gradient of the full mean loss.
        world, rank = self.trainer.world_size, self.trainer.global_rank
        return tuple(t[: len(t) // world * world][rank::world] for t in self.full_batch())

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return torch.mean((self.predict(x) - y) ** 2)

    def in_table_units(self, weight: torch.Tensor, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Weights and bias of the standardised model as the table's: y = x·w + b."""
        w = weight * self.y_std.to(weight) / self.x_std.to(weight)
        if bias is None:
            return {"w": w}
        b = self.y_mean.to(w) + self.y_std.to(w) * bias - (w * self.x_mean.to(w)).sum()
        return {"w": w, "b": b.reshape(1)}

    def design(self) -> torch.Tensor:
        """[X 1] (or X without a bias) in float64: the loss is mean((design·θ − y)²), θ = [w, b]."""
        x = self.features.double()
        if self.bias is None:
            return x
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)

    def least_squares(self) -> torch.Tensor:
        """The optimal θ in training units , computed once."""
        if self._least_squares is None:
            x, y = self.design(), self.target.double()
            self._least_squares = torch.linalg.lstsq(x.cpu(), y.cpu().unsqueeze(1)).solution[:, 0].to(x.device)
        return self._least_squares

    def reference(self) -> dict[str, torch.Tensor]:
        """Least squares on the training data, in float64, in the same units as solution()."""
        best, n = self.least_squares(), self.weight.numel()
        reference = self.in_table_units(best[:n], best[n:] if self.bias is not None else None)
        return {**reference, "loss": torch.mean((self.design() @ best - self.target.double()) ** 2)}

    def quadratic_form(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Hessian (2/N)·[X 1]ᵀ[X 1] of the mean squared error, and θ − θ* in training units."""
        x = self.design()
        theta = torch.cat([p.detach().double().flatten() for p in (self.weight, self.bias) if p is not None])
        return 2.0 / len(x) * (x.T @ x), (theta - self.least_squares()).unsqueeze(0)

    def solution(self) -> dict[str, torch.Tensor]:
        return self.in_table_units(self.weight.detach(), None if self.bias is None else self.bias.detach())

    @torch.no_grad()
    def final_metrics(self) -> dict[str, float]:
        metrics = super().final_metrics()
        if self.standardized:  # the loss is in standardised units; this is the error in the target's
            metrics["rmse"] = float(metrics["loss"] ** 0.5 * self.y_std)
        solution = self.solution()
        for x in self.hparams.predict_at or []:
            prediction = torch.full_like(solution["w"], float(x)) @ solution["w"] + solution.get("b", 0.0)
            metrics[f"prediction@{x:g}"] = float(prediction)
        return metrics
