"""`eigen`: the largest eigenvalue of a symmetric positive semi-definite matrix (seed notebook 002,
exercise 1), found by gradient descent on the negative Rayleigh quotient −vᵀAv / vᵀv.

The reference is torch.linalg.eigvalsh. The exercise's power method, v ← Av / ‖Av‖, runs beside
it from the same start vector and is logged as baseline/* at the same step counts, so both
convergence curves sit in one TensorBoard chart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from descend.data.matrix import SYMMETRIC, matrix_source, require_symmetric
from descend.errors import ConfigError
from descend.tasks.base import Task, initial


def line_angle(v: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Angle in radians, in [0, π/2], between the lines spanned by vectors `v` and `e` (shape [n]).

    arccos(|cos|) loses half the digits near 0 (an angle of 1e-8 rad comes out as 0 or 1.5e-8);
    Kahan's form 2·atan2(‖u − w‖, ‖u + w‖) with unit vectors u, w (w's sign taken to face u) keeps
    full relative accuracy everywhere (W. Kahan, "How Futile are Mindless Assessments of Roundoff
    in Floating-Point Computation?", 2006, §12).
    """
    u = v / v.norm()
    w = e / e.norm()
    w = torch.where(u @ w < 0, -w, w)
    return 2 * torch.atan2((u - w).norm(), (u + w).norm())


class EigenTask(Task):
    device_caches = (*Task.device_caches, "_top", "_power")

    @classmethod
    def check_config(cls, task: Mapping[str, Any]) -> None:
        super().check_config(task)
        cls.matrix_shape(task, need=SYMMETRIC)
        listed = cls.listed_matrix(task)
        if listed is not None:
            require_symmetric(listed, definite=False)
        if task.get("init") == "zeros":
            raise ConfigError("task.init=zeros gives v = 0, where the Rayleigh quotient is undefined; use randn or rand")

    def __init__(self, matrix: dict[str, Any], init: str = "randn", **base: Any) -> None:
        super().__init__(**base)
        a = matrix_source(**matrix)
        require_symmetric(a, definite=False)
        self.register_buffer("a", a, persistent=False)
        self.v = torch.nn.Parameter(initial(init, a.shape[0]))
        self.register_buffer("v0", self.v.detach().clone(), persistent=False)  # where both methods start
        # (iterations, vector), on v0's device: _apply moves it with the module (device_caches)
        self._power: tuple[int, torch.Tensor] = (0, self.v0.double())

    def full_batch(self) -> tuple[torch.Tensor, ...]:
        return (self.a,)

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        (a,) = batch
        return -(self.v @ a @ self.v) / (self.v @ self.v)

    def top_eigenpair(self) -> tuple[torch.Tensor, torch.Tensor]:
        values, vectors = torch.linalg.eigh(self.a.double())
        return values[-1], vectors[:, -1]

    def reference(self) -> dict[str, torch.Tensor]:
        value, _ = self.top_eigenpair()
        return {"loss": -value}

    def solution(self) -> dict[str, torch.Tensor]:
        v = self.v.detach()
        return {"v": v / v.norm(), "eigenvalue": (v @ self.a @ v / (v @ v)).reshape(1)}

    @torch.no_grad()
    def distances(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().distances(loss)
        out.update(self.errors("ref", self.v.detach().double()))
        out.update(self.errors("baseline", self.power_iterate(self.global_step)))
        return out

    def errors(self, prefix: str, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Relative error of the Rayleigh quotient and the angle (degrees) to the top eigenvector."""
        value, vector = self.cached_top()
        a = self.a.double()
        rayleigh = v @ a @ v / (v @ v)
        return {f"{prefix}/eigenvalue_rel_error": (rayleigh - value).abs() / value,
                f"{prefix}/angle_deg": torch.rad2deg(line_angle(v, vector))}

    def cached_top(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not hasattr(self, "_top"):
            self._top = self.top_eigenpair()
        return self._top

    def power_iterate(self, iterations: int) -> torch.Tensor:
        """The power method's vector after `iterations` steps from v's initial value (the same
        after a resume: it is drawn from the seed), advanced lazily from the last call."""
        done, v = self._power
        if iterations < done:
            done, v = 0, self.v0.double()
        a = self.a.double()
        for _ in range(iterations - done):
            v = a @ v
            v = v / v.norm()
        self._power = (iterations, v)
        return v
