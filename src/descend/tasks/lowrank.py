"""`lowrank`: A ≈ U Vᵀ by gradient descent on ‖A − U Vᵀ‖²_F, as seed notebook 002 sets it up.

The closed form is the truncated SVD (Eckart–Young): no rank-r matrix comes closer to A,
and the optimal loss is the sum of the squared singular values beyond the r-th.
"""

from __future__ import annotations

from typing import Any

import torch

from descend.data.matrix import matrix_source
from descend.errors import require_int
from descend.plots import side_by_side
from descend.tasks.base import Task, initial


class LowRankTask(Task):
    def __init__(self, matrix: dict[str, Any], rank: int = 2, init: str = "rand", **base: Any) -> None:
        super().__init__(**base)
        a = matrix_source(**matrix)
        rows, cols = a.shape
        require_int(rank, "task.rank", 1, min(rows, cols), why=f"the matrix is {rows}x{cols}")
        self.register_buffer("matrix", a, persistent=False)
        self.U = torch.nn.Parameter(initial(init, rows, rank))
        self.V = torch.nn.Parameter(initial(init, cols, rank))

    def full_batch(self) -> tuple[torch.Tensor, ...]:
        return (self.matrix,)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        (a,) = batch
        return torch.sum((a - self.U @ self.V.T) ** 2)

    def reference(self) -> dict[str, torch.Tensor]:
        u, s, vh = torch.linalg.svd(self.matrix.double(), full_matrices=False)
        r = self.U.shape[1]
        best = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
        return {"UVt": best, "loss": torch.sum(s[r:] ** 2)}

    def solution(self) -> dict[str, torch.Tensor]:
        return {"U": self.U.detach(), "V": self.V.detach(), "UVt": (self.U @ self.V.T).detach()}

    @torch.no_grad()
    def distances(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().distances(loss)
        # ‖A − U Vᵀ‖_F / ‖A‖_F: how much of the matrix the factorisation misses
        out["reconstruction_rel_error"] = loss.double().clamp_min(0).sqrt() / torch.linalg.norm(self.matrix.double())
        return out

    def images(self) -> dict[str, Any]:
        return {"A | U·Vᵀ": side_by_side(self.matrix, (self.U @ self.V.T).detach())}
