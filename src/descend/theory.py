"""What theory predicts for a quadratic objective, from its Hessian, beside what a run measures.

A quadratic task's loss is f(θ) = f* + ½ Σ_rows e_r H e_rᵀ with e = θ − θ* arranged in rows that
share one Hessian block H (the inverse task's W ↦ W·M has one block, (2/n²)·M·Mᵀ, for every row
of W; linreg and quadratic have one row). Plain gradient descent, θ ← θ − lr·∇f, moves each
eigen-component of e by the factor (1 − lr·λ) per step, so with c_i² the initial error's energy
along eigenvector i (summed over rows):

    excess loss after k steps   ½ Σ_i λ_i (1 − lr·λ_i)^(2k) c_i²
    largest stable step size    lr_critical = 2 / λ_max
    fastest step size           lr_optimal  = 2 / (λ_min + λ_max), contraction (κ − 1)/(κ + 1)

"Plain" is what that recursion describes: torch.optim.SGD without momentum, weight decay or
nesterov, no scheduler, no gradient clipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Spectrum:
    eigenvalues: torch.Tensor  # of the Hessian block, float64, ascending
    energies: torch.Tensor  # the initial error's squared components along the eigenvectors, summed over rows

    @classmethod
    def of(cls, hessian_block: torch.Tensor, error_rows: torch.Tensor) -> "Spectrum":
        """From a symmetric Hessian block (m×m) and the error at the start, rows of length m."""
        values, vectors = torch.linalg.eigh(hessian_block.double().cpu())
        components = error_rows.double().cpu().reshape(-1, len(values)) @ vectors
        return cls(values, components.square().sum(0))

    @property
    def smallest(self) -> float:
        return float(self.eigenvalues[0])

    @property
    def largest(self) -> float:
        return float(self.eigenvalues[-1])

    @property
    def condition_number(self) -> float:
        return self.largest / self.smallest if self.smallest > 0 else float("inf")

    @property
    def lr_critical(self) -> float:
        return 2.0 / self.largest

    @property
    def lr_optimal(self) -> float:
        return 2.0 / (self.smallest + self.largest)

    def contraction(self, lr: float) -> float:
        """The error's worst shrink factor per step at this lr (≥ 1: no convergence). A zero
        eigenvalue (a flat direction) is left out: the error along it never changes, nor matters."""
        active = self.eigenvalues[self.eigenvalues > 1e-12 * self.largest]
        return float((1 - lr * active).abs().max())

    def __post_init__(self) -> None:
        # as Python floats for excess_loss: it runs at every logged step of every run (and of
        # every member of a population), and torch's per-op cost is most of it on a few numbers
        self._terms = list(zip(self.eigenvalues.tolist(), self.energies.tolist()))

    def excess_loss(self, lr: float, steps: int) -> float:
        """The loss above the optimum after `steps` plain gradient-descent steps from the start."""
        return 0.5 * sum(value * power((1 - lr * value) ** 2, steps) * energy for value, energy in self._terms)

    def summary(self, lr: float | None) -> dict[str, float]:
        """What metrics.json, the console and TensorBoard state; the contraction for plain SGD only."""
        out = {"eigenvalue_min": self.smallest, "eigenvalue_max": self.largest, "condition_number": self.condition_number,
               "lr_critical": self.lr_critical, "lr_optimal": self.lr_optimal}
        if lr is not None:
            out["contraction"] = self.contraction(lr)
        return out


def plain_sgd_lr(optimizer: torch.optim.Optimizer, has_scheduler: bool, clipping: Any) -> float | None:
    """The learning rate when the run is plain gradient descent (see the module's docstring), else None."""
    if type(optimizer) is not torch.optim.SGD or has_scheduler or clipping or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    if group.get("momentum", 0) or group.get("weight_decay", 0) or group.get("nesterov", False):
        return None
    return float(group["lr"])


def describe(theory: dict[str, float], lr: float | None) -> str:
    """One line for the console and the TensorBoard text."""
    text = (f"theory: Hessian eigenvalues {theory['eigenvalue_min']:.4g} … {theory['eigenvalue_max']:.4g} "
            f"(condition number {theory['condition_number']:.4g}); lr_critical {theory['lr_critical']:.4g}, "
            f"lr_optimal {theory['lr_optimal']:.4g}")
    if lr is not None:
        text += f"; plain SGD at lr {lr:.4g} {error_per_step(theory['contraction'])}"
    return text


def error_per_step(contraction: float) -> str:
    """What the worst factor per step does to the error, in words: below 1 it shrinks, above 1
    it grows (lr above lr_critical), at 1 (lr at lr_critical) its worst component keeps its size."""
    if math.isclose(contraction, 1.0, rel_tol=1e-9):
        return "keeps the error's size (a factor 1 per step along λmax): it stays, without converging"
    if contraction > 1:
        return f"grows the error by a factor {contraction:.4g} per step: it diverges"
    return f"shrinks the error by a factor {contraction:.4g} per step"


def power(base: float, exponent: int) -> float:
    """base ** exponent, infinite where it overflows (as in torch), not an OverflowError."""
    try:
        return base**exponent
    except OverflowError:
        return math.inf
