"""`linreg`: fit y = X·w + b by mean squared error, as seed notebook 003 does."""

from __future__ import annotations

from typing import Any

import torch

from descend.data.table import table_source
from descend.tasks.base import Task, initial


class LinRegTask(Task):
    def __init__(
        self,
        data: dict[str, Any],
        bias: bool = True,
        init: str = "zeros",
        predict_at: list[float] | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        table = table_source(**data)
        self.feature_names = table.feature_names
        self.register_buffer("features", table.features, persistent=False)
        self.register_buffer("target", table.target, persistent=False)
        self.weight = torch.nn.Parameter(initial(init, table.features.shape[1]))
        self.bias = torch.nn.Parameter(initial(init, 1)) if bias else None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
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

    def reference(self) -> dict[str, torch.Tensor]:
        x, y = self.features.double(), self.target.double()
        if self.bias is not None:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
        best = torch.linalg.lstsq(x.cpu(), y.cpu().unsqueeze(1)).solution[:, 0].to(x.device)
        reference = {"w": best[: self.weight.numel()], "loss": torch.mean((x @ best - y) ** 2)}
        if self.bias is not None:
            reference["b"] = best[-1:]
        return reference

    def solution(self) -> dict[str, torch.Tensor]:
        solution = {"w": self.weight.detach()}
        if self.bias is not None:
            solution["b"] = self.bias.detach()
        return solution

    @torch.no_grad()
    def final_metrics(self) -> dict[str, float]:
        metrics = super().final_metrics()
        for x in self.hparams.predict_at or []:
            point = torch.full((self.weight.numel(),), float(x), dtype=self.weight.dtype, device=self.weight.device)
            metrics[f"prediction@{x:g}"] = float(self.predict(point))
        return metrics
