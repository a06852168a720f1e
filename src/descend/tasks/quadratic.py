"""`quadratic`: minimise ½ xᵀA x − bᵀx, seed notebook 002's quadratic form with a linear term.

A is symmetric positive definite, so the optimum is x* = A⁻¹b with value −½ bᵀx*, and the
Hessian is A itself: the task theory.py was written for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from descend.data.matrix import SYMMETRIC, matrix_source, require_symmetric
from descend.errors import ConfigError
from descend.plots import heatmap
from descend.tasks.base import Task, initial


def check_b(b: list[float] | None, size: int | None) -> None:
    """task.b: null, or as many values as the matrix has rows (where that is known)."""
    if b is not None and size is not None and len(b) != size:
        raise ConfigError(f"task.b has {len(b)} values but the matrix is {size}x{size}; give {size} values or b=null")


class QuadraticTask(Task):
    @classmethod
    def check_config(cls, task: Mapping[str, Any]) -> None:
        super().check_config(task)
        shape = cls.matrix_shape(task, need=SYMMETRIC)
        check_b(task.get("b"), shape and shape[0])
        listed = cls.listed_matrix(task)
        if listed is not None:
            require_symmetric(listed, definite=True)

    def __init__(self, matrix: dict[str, Any], b: list[float] | None = None, init: str = "zeros", **base: Any) -> None:
        super().__init__(**base)
        a = matrix_source(**matrix)
        require_symmetric(a, definite=True)
        size = a.shape[0]
        check_b(b, size)  # a file's size is known now
        if b is None:  # drawn with the matrix's seed, after it: the same config gives the same problem
            vector = torch.randn(size, generator=torch.Generator().manual_seed(matrix.get("seed", 0) + 1))
        else:
            vector = torch.tensor([float(v) for v in b])
        self.register_buffer("a", a, persistent=False)
        self.register_buffer("b", vector, persistent=False)
        self.x = torch.nn.Parameter(initial(init, size))

    def full_batch(self) -> tuple[torch.Tensor, ...]:
        return self.a, self.b

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        a, b = batch
        return 0.5 * self.x @ a @ self.x - b @ self.x

    def reference(self) -> dict[str, torch.Tensor]:
        a, b = self.a.double(), self.b.double()
        x = torch.linalg.solve(a, b)
        return {"x": x, "loss": -0.5 * b @ x}

    def solution(self) -> dict[str, torch.Tensor]:
        return {"x": self.x.detach()}

    def quadratic_form(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a.double(), (self.x.detach().double() - self.cached_reference()["x"]).unsqueeze(0)

    def images(self) -> dict[str, Any]:
        # x against x* as two rows: where the components stand on their way
        return {"x | x*": heatmap(torch.stack([self.x.detach().float(), self.cached_reference()["x"].float()]))}
