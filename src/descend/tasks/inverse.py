"""`inverse`: find W with W·M = I by gradient descent on mean((W·M − I)²), as seed notebook 000 does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from descend.data.matrix import matrix_source, require_square
from descend.errors import ConfigError, is_number
from descend.plots import heatmap
from descend.tasks.base import Task, initial


SQUARE = "the inverse task needs a square matrix"


def check_invertible(m: torch.Tensor, max_condition: float) -> None:
    """The n×n matrix M's condition number is below task.max_condition, or a ConfigError."""
    condition = float(torch.linalg.cond(m.double()))
    if not condition < max_condition:
        raise ConfigError(
            f"task.matrix: the matrix is singular or nearly so (condition number {condition:.3g} ≥ "
            f"task.max_condition={max_condition:.3g}); give an invertible matrix"
        )


class InverseTask(Task):
    @classmethod
    def check_config(cls, task: Mapping[str, Any]) -> None:
        super().check_config(task)
        cls.matrix_shape(task, need=SQUARE)
        limit = task.get("max_condition")
        if "max_condition" in task and (not is_number(limit) or not limit > 1):
            # every matrix's condition number is at least 1: none would be accepted
            raise ConfigError(f"task.max_condition={limit!r} must be a number > 1, e.g. 1e7 (a condition number is at least 1)")
        listed = cls.listed_matrix(task)
        if listed is not None and "max_condition" in task:
            check_invertible(listed, limit)

    def __init__(self, matrix: dict[str, Any], init: str = "rand", max_condition: float = 1e7, **base: Any) -> None:
        super().__init__(**base)
        m = matrix_source(**matrix)
        require_square(tuple(m.shape), SQUARE)  # a file's shape is known now
        check_invertible(m, max_condition)
        size = m.shape[0]
        # Data as non-persistent buffers: they follow the module to its device and precision,
        # and are rebuilt from the config rather than stored in every checkpoint.
        self.register_buffer("matrix", m, persistent=False)
        self.register_buffer("identity", torch.eye(size), persistent=False)
        self.weight = torch.nn.Parameter(initial(init, size, size))

    def full_batch(self) -> tuple[torch.Tensor, ...]:
        return self.matrix, self.identity

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        matrix, identity = batch
        return torch.mean((self.weight @ matrix - identity) ** 2)

    def reference(self) -> dict[str, torch.Tensor]:
        return {"W": torch.linalg.inv(self.matrix.double()), "loss": torch.tensor(0.0)}

    def solution(self) -> dict[str, torch.Tensor]:
        return {"W": self.weight.detach()}

    def quadratic_form(self) -> tuple[torch.Tensor, torch.Tensor]:
        """mean((W·M − I)²) over n² entries: each row w of W sees the Hessian (2/n²)·M·Mᵀ."""
        m = self.matrix.double()
        # scaled in place: the same numbers as 2/n² · (M·Mᵀ) without a third n×n float64 copy at the peak
        return (m @ m.T).mul_(2.0 / m.shape[0] ** 2), self.weight.detach().double() - self.cached_reference()["W"]

    def images(self) -> dict[str, Any]:
        return {"W·M": heatmap(self.weight.detach() @ self.matrix)}
