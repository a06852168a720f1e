"""`lowrank`: A ≈ U Vᵀ by gradient descent on ‖A − U Vᵀ‖²_F, as seed notebook 002 sets it up.

The closed form is the truncated SVD (Eckart–Young): no rank-r matrix comes closer to A,
and the optimal loss is the sum of the squared singular values beyond the r-th.

A run saves U and V, and their product U·Vᵀ only while it is small (at most SAVED_PRODUCT
entries): for a 2000×2000 matrix the product is 16 MB of float32 that `U @ V.T` rebuilds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from descend.data.matrix import matrix_source
from descend.errors import require_int
from descend.plots import side_by_side
from descend.tasks.base import Task, initial

SAVED_PRODUCT = 512 * 512  # U·Vᵀ goes into solution.pt/.npz up to this many entries
BLOCK = 1 << 20  # entries of U·Vᵀ compared with the optimum at a time (8 MB in float64)


def check_rank(rank: object, shape: tuple[int, int] | None) -> None:
    """task.rank: a positive integer, at most min(m, n) of the m×n matrix where its shape is known
    (from the config; a file's once read): beyond it U·Vᵀ has no more to fit."""
    if shape is None:
        require_int(rank, "task.rank")
    else:
        require_int(rank, "task.rank", 1, min(shape), why=f"the matrix is {shape[0]}x{shape[1]}")


class LowRankTask(Task):
    device_caches = (*Task.device_caches, "_best", "_matrix_norm")  # the optimum's factors, moved with the module

    @classmethod
    def check_config(cls, task: Mapping[str, Any]) -> None:
        super().check_config(task)
        shape = cls.matrix_shape(task)
        if "rank" in task:
            check_rank(task["rank"], shape)

    def __init__(self, matrix: dict[str, Any], rank: int = 2, init: str = "rand", **base: Any) -> None:
        super().__init__(**base)
        a = matrix_source(**matrix)
        rows, cols = a.shape
        check_rank(rank, (rows, cols))  # a file's shape is known now
        self.register_buffer("matrix", a, persistent=False)
        self.U = torch.nn.Parameter(initial(init, rows, rank))
        self.V = torch.nn.Parameter(initial(init, cols, rank))
        self._best: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def full_batch(self) -> tuple[torch.Tensor, ...]:
        return (self.matrix,)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        (a,) = batch
        return torch.sum((a - self.U @ self.V.T) ** 2)

    def best(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The best rank-r approximation as float64 factors, left (m×r) and right (n×r, orthonormal
        columns) with best = left·rightᵀ, and the optimal loss; computed once.

        From the eigen-decomposition of the smaller Gram matrix G (AᵀA or AAᵀ): its eigenvalues are
        the squared singular values and its top-r eigenvectors span the top-r singular vectors, so
        the best approximation is A projected on them. A full SVD computes every singular vector
        pair; this costs about a fifth of it (2000×2000: 12.5 s against 88 s on a loaded 2-core
        machine) and agrees with it to 1e-12 (tests/test_tasks.py). The m×n product is never kept."""
        if self._best is None:
            a = self.matrix.double()
            r = self.U.shape[1]
            tall = a.shape[0] >= a.shape[1]
            values, vectors = torch.linalg.eigh(a.T @ a if tall else a @ a.T)  # ascending
            top = vectors[:, len(values) - r:]
            left, right = (a @ top, top) if tall else (top, a.T @ top)
            # the discarded squared singular values; rounding may leave a tiny negative eigenvalue
            self._best = (left, right, values[: len(values) - r].clamp_min(0).sum())
            self._matrix_norm = torch.linalg.norm(a)
        return self._best

    def reference(self) -> dict[str, torch.Tensor]:
        left, right, optimum = self.best()
        return {"UVt": left @ right.T, "loss": optimum}

    def solution(self) -> dict[str, torch.Tensor]:
        saved = {"U": self.U.detach(), "V": self.V.detach()}
        if self.matrix.numel() <= SAVED_PRODUCT:
            saved["UVt"] = (self.U @ self.V.T).detach()
        return saved

    @torch.no_grad()
    def distances(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """As the base class's, from the optimum's factors a block of rows at a time: no m×n float64
        copy of U·Vᵀ, of the optimum or of their difference is ever held (2000×2000: 32 MB each)."""
        left, right, optimum = self.best()
        rows = max(1, BLOCK // right.shape[0])
        squared = torch.zeros((), dtype=torch.float64, device=left.device)
        for start in range(0, left.shape[0], rows):
            block = (self.U[start:start + rows] @ self.V.T).double() - left[start:start + rows] @ right.T
            squared += block.square().sum()
        return {
            "ref/excess_loss": loss.double() - optimum,
            # ‖U Vᵀ − best‖_F / ‖best‖_F; right has orthonormal columns, so ‖best‖_F = ‖left‖_F
            "ref/rel_error": squared.sqrt() / torch.linalg.norm(left).clamp_min(1e-300),
            # ‖A − U Vᵀ‖_F / ‖A‖_F: how much of the matrix the factorisation misses
            "reconstruction_rel_error": loss.double().clamp_min(0).sqrt() / self._matrix_norm,
        }

    def images(self) -> dict[str, Any]:
        return {"A | U·Vᵀ": side_by_side(self.matrix, (self.U @ self.V.T).detach())}
