"""The sharpness of the training loss beside the run: the top eigenvalue of its Hessian at the
current parameters, against the largest curvature the optimiser is stable on at its current lr.

Cohen et al. ("Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability",
ICLR 2021) show that under full-batch gradient descent the sharpness rises until it reaches 2/lr
and hovers there. The eigenvalue comes from Lanczos iterations (full reorthogonalisation) on
Hessian-vector products by double backward, on the task's full training batch (full_batch(),
whatever the run's batch size), from a start vector of a fixed seed; the run's random state,
gradients and parameters are left as they were, so its numbers do not move.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)
NAMES = ("curvature/sharpness", "curvature/threshold")


def top_hessian_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor], iterations: int = 30,
                           tol: float = 1e-5, seed: int = 0) -> tuple[float, int]:
    """The largest (algebraic) eigenvalue of the Hessian of loss_fn() in `params`, and the number of
    Hessian-vector products it took. Lanczos stops when the top Ritz pair's residual ‖Hy − θy‖ is
    below tol·|θ| (the eigenvalue's error is at most that, and usually its square over the gap), at
    an invariant subspace (exact), or after `iterations` products. The Lanczos basis is kept in
    float64: memory iterations × (number of parameters) × 8 bytes."""
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True, allow_unused=True)
    used = [(p, g) for p, g in zip(params, grads) if g is not None and g.requires_grad]
    sizes = [p.numel() for p, _ in used]
    device = params[0].device

    def hvp(vector: torch.Tensor) -> torch.Tensor:
        pieces = [v.reshape(p.shape).to(p.dtype) for v, (p, _) in zip(vector.split(sizes), used)]
        products = torch.autograd.grad([g for _, g in used], [p for p, _ in used], grad_outputs=pieces,
                                       retain_graph=True, allow_unused=True)
        return torch.cat([torch.zeros(p.numel(), device=device, dtype=torch.float64) if h is None else h.double().flatten()
                          for h, (p, _) in zip(products, used)])

    if not used:  # the loss does not curve in these parameters
        return 0.0, 0
    start = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
    basis, alphas, betas = [start / start.norm()], [], []
    for count in range(1, min(iterations, sum(sizes)) + 1):
        w = hvp(basis[-1])
        alphas.append(float(w @ basis[-1]))
        q = torch.stack(basis)
        for _ in range(2):  # twice is enough (Kahan): the basis stays orthogonal to rounding
            w = w - q.T @ (q @ w)
        beta = float(w.norm())
        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(tridiagonal)
        top = float(values[-1])
        if beta * abs(float(vectors[-1, -1])) <= tol * abs(top) or beta <= 1e-12 * max(abs(top), 1e-300):
            break
        betas.append(beta)
        basis.append(w / beta)
    return top, count


def stability_threshold(optimizer: torch.optim.Optimizer) -> float | None:
    """The sharpness above which the optimiser's next step diverges on a quadratic of that
    curvature: 2/lr for SGD, (2 + 2β)/lr heavy ball, (2 + 2β)/((1 + 2β)·lr) Nesterov, less the
    weight decay (theory.SGDStep.lr_limit); None for other optimisers or several groups."""
    from descend.theory import SGDStep

    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return None
    settings = SGDStep.of(optimizer.param_groups[0])
    if settings.lr <= 0:
        return None
    limit, _ = settings.lr_limit(settings.lr)  # lr_limit(μ) = K/μ, so at μ = lr it is K/lr
    return limit - settings.weight_decay


class Sharpness(pl.Callback):
    """Every `every_n_steps` steps (0: off), before that step's update, and at the end of training:
    `curvature/sharpness` (the top Hessian eigenvalue of the training loss on the full training
    batch) and `curvature/threshold` (stability_threshold), on one custom-scalars chart, with
    `curvature/hvps` (the Hessian-vector products it took, each about two backward passes). The
    time it took is said at the end."""

    def __init__(self, every_n_steps: int = 0, iterations: int = 30, tol: float = 1e-5) -> None:
        self.every_n_steps, self.iterations, self.tol = every_n_steps, iterations, tol
        self._spent, self._count, self._measured_at = 0.0, 0, -1

    @property
    def event_every_n_steps(self) -> int:
        """Read by descend's step planner: a batch of steps starts at each of these steps."""
        return self.every_n_steps

    @property
    def curve_names(self) -> tuple[str, ...]:
        """The names it logs, for the custom-scalars layout (Task.curve_names)."""
        return (*NAMES, "curvature/hvps") if self.every_n_steps > 0 else ()

    def measure(self, trainer: pl.Trainer, task: Any) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._measured_at:
            return
        began = time.perf_counter()
        params = [p for p in task.parameters() if p.requires_grad]
        devices = [params[0].device] if params and params[0].device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # dropout's draws here leave the run's generator as it was
            batch = task.full_batch()
            value, products = top_hessian_eigenvalue(lambda: task.loss(batch), params, self.iterations, self.tol)
        metrics = {"curvature/sharpness": value, "curvature/hvps": float(products)}
        threshold = stability_threshold(trainer.optimizers[0]) if trainer.optimizers else None
        if threshold is not None:
            metrics["curvature/threshold"] = threshold
        task.metric_buffer.add(step, metrics)
        self._last = metrics
        self._spent += time.perf_counter() - began
        self._count += 1
        self._measured_at = step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._spent, self._count, self._measured_at, self._started = 0.0, 0, -1, time.perf_counter()
        self._last: dict[str, float] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_steps <= 0:
            return
        self.measure(trainer, pl_module)
        pl_module.metric_buffer.flush(pl_module.writing_loggers())
        share = self._spent / max(time.perf_counter() - self._started, 1e-9)
        last = self._last
        threshold = f" (threshold {last['curvature/threshold']:.4g})" if "curvature/threshold" in last else ""
        log.info(f"sharpness: {last['curvature/sharpness']:.4g} at step {self._measured_at}{threshold}; {self._count} "
                 f"measurements on the full training batch took {self._spent:.3g} s ({share:.0%} of the run)")
