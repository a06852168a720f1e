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
nesterov, no scheduler, no gradient clipping. Momentum, Nesterov, weight decay and schedules are
linear too: see LinearPrediction and the comment above SGDStep.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


# Spectrum.of's results by their inputs' bytes, the oldest dropped past 8
_SPECTRA: dict[tuple[Any, ...], "Spectrum"] = {}


@dataclass(eq=False)  # compared by identity: Spectrum.of shares one between equal inputs
class Spectrum:
    eigenvalues: torch.Tensor  # of the Hessian block, float64, ascending
    energies: torch.Tensor  # the initial error's squared components along the eigenvectors, summed over rows
    vectors: torch.Tensor | None = None  # the eigenvectors, as columns (Spectrum.of keeps them)

    @classmethod
    def of(cls, hessian_block: torch.Tensor, error_rows: torch.Tensor) -> "Spectrum":
        """From a symmetric Hessian block (m×m) and the error at the start, rows of length m.
        Equal inputs give the same object (the last few kept): a learning-rate sweep's members
        share one spectrum, so excess_losses tells they agree by identity, not term by term."""
        hessian, error = hessian_block.double().cpu(), error_rows.double().cpu()
        key = (tuple(hessian.shape), tuple(error.shape), hessian.numpy().tobytes(), error.numpy().tobytes())
        spectrum = _SPECTRA.get(key)
        if spectrum is None:
            values, vectors = torch.linalg.eigh(hessian)
            components = error.reshape(-1, len(values)) @ vectors
            spectrum = cls(values, components.square().sum(0), vectors)
            if len(_SPECTRA) >= 8:
                _SPECTRA.pop(next(iter(_SPECTRA)))
            _SPECTRA[key] = spectrum
        return spectrum

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
        self._per_lr: dict[float, list[tuple[float, float, float]]] = {}
        self._columns: dict[tuple[float, ...], list[list[float]]] = {}  # excess_losses' bases, by the members' lrs

    def excess_loss(self, lr: float, steps: int) -> float:
        """The loss above the optimum after `steps` plain gradient-descent steps from the start."""
        terms = self._per_lr.get(lr)
        if terms is None:  # each term's (1 - lr·λ)², computed once: this runs at every logged step of every member
            terms = self._per_lr[lr] = [(value, (1 - lr * value) ** 2, energy) for value, energy in self._terms]
        try:
            return 0.5 * sum(value * base**steps * energy for value, base, energy in terms)
        except OverflowError:  # a diverging run: infinite, as in torch
            return 0.5 * sum(value * power(base, steps) * energy for value, base, energy in terms)

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


# ---- every linear update of torch.optim.SGD: momentum, Nesterov, weight decay, schedules ----
#
# torch.optim.SGD's step (dampening d, momentum β, weight decay w, lr α of that step):
#     g ← ∇f(θ) + w·θ;  buf ← g at the first step, else β·buf + (1 − d)·g;
#     step ← g + β·buf (nesterov) or buf (heavy ball) or g (β = 0);  θ ← θ − α·step.
# On a quadratic, g = (H + w)(θ − θ*_w) with θ*_w = (H + w)⁻¹ H θ* the optimum the decay shifts
# to. In H's eigenbasis each component u of θ − θ*_w (one per eigenvalue λ, μ = λ + w, and per
# row) and its buffer component b follow a 2×2 linear map of (u_k, b_(k−1)), with c the weight
# of the new gradient (1 at the first step, as if b_(−1) = 0; then 1 − d):
#     heavy ball   u' = (1 − α c μ) u − α β b      b' = c μ u + β b
#     nesterov     u' = (1 − α μ (1 + β c)) u − α β² b      b' = c μ u + β b
# Its spectral radius is the error's contraction per step; it is below 1 for all μ ≤ μmax when
#     heavy ball   α < (2 + 2β) / (c μmax)          (Polyak 1964; Goh 2017)
#     nesterov     α < (2 + 2β) / ((1 + 2βc) μmax)  (and α < (1 + β)/(β μmax), never the smaller for c = 1)
# and heavy ball is fastest at α* = 4/(√μmax + √μmin)², β* = ((√κ − 1)/(√κ + 1))², where the
# error shrinks by (√κ − 1)/(√κ + 1) per step (Polyak 1964). The excess loss over the
# unregularised optimum is ½ Σ λ (u + δ)², δ = θ*_w − θ* = −w/(λ + w)·θ* per component.


@dataclass(frozen=True)
class SGDStep:
    """One step's hyper-parameters of torch.optim.SGD (its single parameter group)."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    @classmethod
    def of(cls, group: dict[str, Any]) -> "SGDStep":
        return cls(float(group["lr"]), float(group.get("momentum", 0.0)), float(group.get("dampening", 0.0)),
                   bool(group.get("nesterov", False)), float(group.get("weight_decay", 0.0)))

    @property
    def plain(self) -> bool:
        return not (self.momentum or self.weight_decay or self.nesterov)

    def maps(self, mu: np.ndarray, first: bool) -> np.ndarray:
        """The 2×2 maps of (u, b) for eigenvalues μ (shape m → m×2×2); `first`: the buffer is empty."""
        a, beta = self.lr, self.momentum
        c = 1.0 if first or not beta else 1.0 - self.dampening
        out = np.empty((len(mu), 2, 2))
        out[:, 0, 0] = 1 - a * mu * (1 + beta * c) if self.nesterov else 1 - a * c * mu
        out[:, 0, 1] = -a * beta**2 if self.nesterov else -a * beta
        out[:, 1, 0] = c * mu
        out[:, 1, 1] = beta
        return out

    def lr_limit(self, mu_max: float) -> tuple[float, str]:
        """The largest stable lr for curvature up to μmax, and its formula in words."""
        beta, c = self.momentum, 1.0 - self.dampening
        if not beta:
            return 2.0 / mu_max, "2/λmax"
        if beta >= 1:  # the 2×2 map's determinant is β (heavy ball): |β| < 1 is needed at every lr
            return 0.0, "none: momentum 1 or more converges at no lr"
        if self.nesterov:
            limit = (2 + 2 * beta) / ((1 + 2 * beta * c) * mu_max)
            return min(limit, (1 + beta) / (beta * mu_max)), "(2+2β)/((1+2β)λmax), Nesterov"
        return (2 + 2 * beta) / (c * mu_max), "(2+2β)/λmax, heavy ball"

    def describe(self) -> str:
        """The optimiser in words: 'SGD', 'SGD with heavy-ball momentum 0.9, weight decay 0.01'."""
        parts = [f"{'Nesterov' if self.nesterov else 'heavy-ball'} momentum {self.momentum:g}"] if self.momentum else []
        if self.dampening and self.momentum:
            parts.append(f"dampening {self.dampening:g}")
        if self.weight_decay:
            parts.append(f"weight decay {self.weight_decay:g}")
        return "SGD" + (" with " + ", ".join(parts) if parts else "")


def plain_sgd_summary(summary: dict[str, float]) -> bool:
    """Whether a run's theory block (metrics.json `theory`) is plain SGD's, whose lr_critical and
    lr_optimal are its own: momentum, Nesterov or weight decay state their own lr_limit, and a
    non-linear optimiser (Adam, …) states none."""
    return ("lr_limit" in summary and math.isclose(summary["lr_limit"], summary["lr_critical"])
            and "heavy_ball_rate" not in summary)


def heavy_ball_optimum(mu_min: float, mu_max: float) -> dict[str, float]:
    """Polyak's (1964) fastest heavy ball on curvature in [μmin, μmax]: lr α*, momentum β*, rate."""
    root_min, root_max = math.sqrt(max(mu_min, 0.0)), math.sqrt(mu_max)
    rate = (root_max - root_min) / (root_max + root_min)
    return {"heavy_ball_lr_optimal": 4.0 / (root_max + root_min) ** 2, "heavy_ball_momentum_optimal": rate**2,
            "heavy_ball_rate": rate}


def not_linear(optimizer: torch.optim.Optimizer, scheduler: Any, clipping: Any) -> str | None:
    """None when every step of the run is linear in the error on a quadratic (torch.optim.SGD with one
    parameter group, any momentum, Nesterov, dampening or weight decay, and a schedule whose lr does
    not depend on the loss), else why not, in words."""
    name = type(optimizer).__name__
    if type(optimizer) is not torch.optim.SGD:
        return f"{name}'s update is not linear in the error"
    if len(optimizer.param_groups) != 1:
        return "SGD with several parameter groups is not predicted"
    if optimizer.param_groups[0].get("maximize"):
        return "SGD with maximize=true ascends"
    if clipping:
        return "gradient clipping is not linear in the error"
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return "ReduceLROnPlateau's lr depends on the loss"
    return None


class Schedule:
    """The SGD hyper-parameters of each step from `start` on: the optimiser's own, under a copy of
    the run's scheduler stepped as stepping.run_group steps the real one (after every `frequency`
    steps, or epochs of `steps_per_epoch` steps), so that the prediction uses each step's own lr."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Any, start: int, interval: str = "step",
                 frequency: int = 1, steps_per_epoch: int = 1) -> None:
        import copy

        self.period = frequency * (steps_per_epoch if interval == "epoch" else 1)
        if scheduler is None:
            self.copy, self.group = None, optimizer.param_groups[0]
        else:  # the copy leaves the parameters out: the scheduler needs only the optimiser's groups
            memo = {id(p): torch.empty(0) for group in optimizer.param_groups for p in group["params"]}
            self.copy = copy.deepcopy(scheduler, memo)
            self.group = self.copy.optimizer.param_groups[0]
        self.next = start  # the step whose settings self.current holds
        self.current = SGDStep.of(self.group)
        self.constant = scheduler is None

    def at(self, step: int) -> SGDStep:
        """Step `step`'s settings (steps are asked for in order, each no earlier than the last)."""
        import warnings

        if self.copy is None:
            return self.current
        while self.next < step:
            self.next += 1
            if self.copy is not None and self.next % self.period == 0:
                with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": the copy's optimiser never steps
                    warnings.simplefilter("ignore")
                    self.copy.step()
                self.current = SGDStep.of(self.group)
        return self.current


class LinearPrediction:
    """The excess loss of a linear SGD run on a quadratic at each step, by the 2×2 maps above applied
    per eigen-component in float64 (a run of steps with equal settings as one matrix power)."""

    def __init__(self, spectrum: Spectrum, vectors: torch.Tensor, error_rows: torch.Tensor, parameter_rows: torch.Tensor,
                 buffer_rows: torch.Tensor | None, schedule: Schedule, start: int) -> None:
        basis = vectors.double().cpu()
        error = error_rows.double().cpu().reshape(-1, len(basis)) @ basis
        self.eigenvalues = spectrum.eigenvalues.numpy()
        self.error = error.numpy()  # θ − θ* along the eigenvectors, rows × m
        self.optimum = (parameter_rows.double().cpu().reshape(-1, len(basis)) @ basis).numpy() - self.error  # θ*
        self.buffer = np.zeros_like(self.error) if buffer_rows is None else (buffer_rows.double().cpu().reshape(-1, len(basis)) @ basis).numpy()
        self.started = buffer_rows is not None
        self.schedule, self.step = schedule, start

    def excess_loss(self, step: int) -> float:
        """The loss above the unregularised optimum at `step` (no earlier than the last step asked for)."""
        if step < self.step:
            raise ValueError(f"the prediction is at step {self.step}; step {step} is behind it")
        with np.errstate(all="ignore"):  # a diverging run overflows to inf, as torch does
            while self.step < step:
                settings = self.schedule.at(self.step)
                count = 1
                if self.started or not settings.momentum or not settings.dampening:  # else the first buffer is the gradient alone
                    if self.schedule.constant:  # no scheduler: one matrix power to the step asked for
                        count = step - self.step
                    while self.step + count < step and self.schedule.at(self.step + count) == settings:
                        count += 1
                self.apply(settings, count)
                self.step += count
            return float(0.5 * (self.eigenvalues * np.square(self.error)).sum())

    def apply(self, settings: SGDStep, count: int) -> None:
        decay = settings.weight_decay
        mu = self.eigenvalues + decay
        shift = np.divide(-decay, mu, out=np.zeros_like(mu), where=mu != 0) * self.optimum  # θ*_w − θ*
        u = self.error - shift
        if not settings.momentum:
            u = u * (1 - settings.lr * mu) ** count
            self.buffer = np.zeros_like(u)
        else:
            power = np.linalg.matrix_power(settings.maps(mu, not self.started), count)  # m × 2 × 2
            u, self.buffer = (power[:, 0, 0] * u + power[:, 0, 1] * self.buffer,
                              power[:, 1, 0] * u + power[:, 1, 1] * self.buffer)
            self.started = True
        self.error = u + shift


def linear_summary(spectrum: Spectrum, settings: SGDStep) -> tuple[dict[str, float], str]:
    """The chosen optimiser's stability limit, its contraction per step (the spectral radius of the
    steady 2×2 maps over the curved directions) and the heavy ball's optimum, on curvature λ + w;
    and the limit's formula."""
    mu = spectrum.eigenvalues.numpy() + settings.weight_decay
    active = mu[np.abs(mu) > 1e-12 * mu.max()]
    limit, formula = settings.lr_limit(float(mu.max()))
    radius = float(np.abs(np.linalg.eigvals(settings.maps(active, first=False))).max()) if settings.momentum \
        else float(np.abs(1 - settings.lr * active).max())
    out = {"lr_limit": limit, "contraction": radius}
    if settings.momentum and not settings.nesterov:
        out.update(heavy_ball_optimum(float(mu.min()), float(mu.max())))
    return out, formula


class RunTheory:
    """What theory says of one run on a quadratic task: the Hessian's numbers (`summary`), and for a
    linear update (`predict`) the optimiser's stability limit, contraction and predicted curve;
    `reason` says why there is none (theory.not_linear)."""

    def __init__(self, spectrum: Spectrum, start: int, reason: str | None) -> None:
        self.spectrum, self.start, self.reason = spectrum, start, reason
        self.summary = spectrum.summary(None)
        self.settings: SGDStep | None = None  # the first step's settings, when predicted
        self.prediction: LinearPrediction | None = None  # None for plain SGD: its closed form is cheaper
        self.formula = ""
        self.scheduled = False

    @property
    def predicts(self) -> bool:
        return self.settings is not None

    def predict(self, schedule: Schedule, error_rows: torch.Tensor, parameter_rows: torch.Tensor,
                buffer_rows: torch.Tensor | None, plain: bool) -> None:
        """From the run's start: `plain` when no scheduler changes the settings."""
        self.settings = schedule.at(self.start)
        self.scheduled = not plain
        if not (plain and self.settings.plain):
            self.prediction = LinearPrediction(self.spectrum, self.spectrum.vectors, error_rows, parameter_rows,
                                               buffer_rows, schedule, self.start)
        numbers, self.formula = linear_summary(self.spectrum, self.settings)
        self.summary.update(numbers)

    def excess_loss(self, step: int) -> float:
        if self.prediction is None:
            return self.spectrum.excess_loss(self.settings.lr, step - self.start)
        return self.prediction.excess_loss(step)

    @property
    def plain(self) -> bool:
        return self.settings is not None and self.settings.plain and not self.scheduled

    def describe(self) -> str:
        """The console's and TensorBoard's theory line."""
        if self.settings is None:
            return describe(self.summary, None) + (f"; no predicted curve: {self.reason}" if self.reason else "")
        if self.plain:
            return describe(self.summary, self.settings.lr)
        lr = f"lr {self.settings.lr:.4g}" + (" (then as its schedule sets it)" if self.scheduled else "")
        text = (describe(self.summary, None) + f"; {self.settings.describe()} at {lr} {error_per_step(self.summary['contraction'])}"
                f"; lr_limit {self.summary['lr_limit']:.4g} ({self.formula})")
        if "heavy_ball_rate" in self.summary:
            text += (f"; heavy ball is fastest at lr {self.summary['heavy_ball_lr_optimal']:.4g}, momentum "
                     f"{self.summary['heavy_ball_momentum_optimal']:.4g}: a factor {self.summary['heavy_ball_rate']:.4g} per step")
        return text

    def warning(self) -> str | None:
        """A warning when the first step's lr is above the optimiser's stability limit."""
        if self.settings is None or not self.settings.lr > self.summary["lr_limit"]:
            return None
        lr = self.settings.lr
        if self.settings.momentum >= 1:
            best = ""
            if "heavy_ball_rate" in self.summary:
                best = (f" (fastest: optimizer.lr={self.summary['heavy_ball_lr_optimal']:.4g} "
                        f"optimizer.momentum={self.summary['heavy_ball_momentum_optimal']:.4g})")
            return (f"warning: optimizer.momentum={self.settings.momentum:g} is 1 or more: {self.settings.describe()} "
                    f"converges at no lr; take a momentum below 1{best}")
        if self.settings.plain:
            return (f"warning: optimizer.lr={lr:g} is above lr_critical = {self.spectrum.lr_critical:.4g} (2/λmax): "
                    f"plain gradient descent diverges on this task; take an lr below it (fastest: {self.spectrum.lr_optimal:.4g})")
        return (f"warning: optimizer.lr={lr:g} is above lr_limit = {self.summary['lr_limit']:.4g} ({self.formula}) for "
                f"{self.settings.describe()}: it diverges on this task; take an lr below it")


def excess_losses(theories: list[RunTheory], step: int) -> list[float]:
    """[theory.excess_loss(step) for theory in theories] (a population's members), bit for bit:
    where all take the plain-SGD closed form from one start over equal spectra (a learning-rate
    sweep), its terms are computed a term at a time for every member together, by the same
    floating-point operations in the same order as Spectrum.excess_loss."""
    first = theories[0]
    spectrum = first.spectrum
    if not all(t.prediction is None and t.start == first.start and (t.spectrum is spectrum or t.spectrum._terms == spectrum._terms)
               for t in theories):
        return [t.excess_loss(step) for t in theories]
    steps = step - first.start
    lrs = tuple(t.settings.lr for t in theories)
    cache = first.spectrum._columns
    bases = cache.get(lrs)
    if bases is None:  # (1 - lr·λ)² of every member, a list per term, as Spectrum.excess_loss computes it
        cache.clear()  # one population at a time: its learning rates as they stand
        bases = cache[lrs] = [[(1 - lr * value) ** 2 for lr in lrs] for value, _ in first.spectrum._terms]
    try:
        total: list[float] = [0] * len(lrs)  # type: ignore[list-item]  - sum() starts from the int 0 too
        for (value, energy), column in zip(first.spectrum._terms, bases):
            total = list(map(operator.add, total, [value * base**steps * energy for base in column]))
    except OverflowError:  # a diverging member: infinite, as Spectrum.excess_loss gives it
        return [t.excess_loss(step) for t in theories]
    return [0.5 * value for value in total]
