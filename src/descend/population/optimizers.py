"""Every member's optimiser as one update of the stacked parameters.

A member's parameters are rows of tensors shaped [members, ...]; its hyper-parameters are rows of
tensors shaped [members, 1, ...]. The update rules are torch's own single-tensor ones
(torch/optim/sgd.py, adam.py, rmsprop.py, torch 2.x), in the same order of operations, so that a
member ends where its own torch optimiser would (to float rounding: a fused multiply-add in one
kernel and not in the other moves the last bit). Running N torch optimisers instead costs N
Python loops per step, which is what a population exists to avoid.

The members' own torch optimisers (`holders`) stay the source of truth for hyper-parameters:
schedulers change their learning rates, `refresh()` reads them back, and `load_into(i)` writes
member i's slice of the state into its holder, whose state_dict is then exactly a single run's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# the torch optimisers a population can run, and the hyper-parameters that may differ per member
VECTORISED = {
    torch.optim.SGD: ("lr", "momentum", "dampening", "weight_decay"),
    torch.optim.Adam: ("lr", "beta1", "beta2", "eps", "weight_decay"),
    torch.optim.AdamW: ("lr", "beta1", "beta2", "eps", "weight_decay"),
    torch.optim.RMSprop: ("lr", "alpha", "eps", "weight_decay", "momentum"),
}
# options that change the update rule, followed per population (jobs that differ in them train
# apart: grouping.population_key); grouping.UNVECTORISED_SWITCHES keeps the others out
SWITCHES = ("nesterov", "amsgrad", "centered")


def hyper(group: dict, name: str) -> float:
    if name in ("beta1", "beta2"):
        return float(group["betas"][name == "beta2"])
    return float(group[name])


class VectorisedOptimizer:
    def __init__(self, holders: Sequence[torch.optim.Optimizer], params: Sequence[torch.Tensor]) -> None:
        self.holders = list(holders)
        self.kind = type(holders[0])
        self.params = list(params)  # stacked: [members, ...] each
        group = holders[0].param_groups[0]
        self.switches = {k: bool(group.get(k, False)) for k in SWITCHES}
        self.steps = 0  # updates taken (torch keeps it per parameter; a population's are in step)
        self.state: dict[str, list[torch.Tensor]] = {}
        self.h: dict[str, torch.Tensor] = {}
        self.refresh()

    def refresh(self) -> None:
        """Read the members' hyper-parameters (after a scheduler changed a learning rate)."""
        names = VECTORISED[self.kind]
        values = [[hyper(h.param_groups[0], name) for h in self.holders] for name in names]
        if values == getattr(self, "_host_values", None):
            return  # unchanged (a scheduler that left every lr as it was): nothing to copy
        self._host_values = values
        # decided here, on the host: a test of a device tensor at every step would wait for the GPU
        self.nonzero: dict[str, tuple[bool, bool]] = {  # (any member's value ≠ 0, every member's)
            name: (any(v != 0 for v in row), all(v != 0 for v in row)) for name, row in zip(names, values)}
        # every hyper-parameter in one host-to-device copy, not waited for: a copy per name (with a
        # scheduler, at every step) each made the GPU stream wait for the host. Safe without pinned
        # memory: CUDA stages a pageable source before cudaMemcpyAsync returns.
        rows = torch.tensor(values, dtype=torch.float64).to(self.params[0].device, non_blocking=True)
        self.h = dict(zip(names, rows))

    def _per_member(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """[members] → [members, 1, …] in the parameter's dtype: torch casts a Python scalar
        hyper-parameter to the tensor's dtype the same way."""
        return values.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        self.steps += 1
        update = {torch.optim.SGD: self._sgd, torch.optim.Adam: self._adam, torch.optim.AdamW: self._adam,
                  torch.optim.RMSprop: self._rmsprop}[self.kind]
        for index, (param, grad) in enumerate(zip(self.params, grads)):
            update(index, param, grad)

    def _buffer(self, name: str, index: int, like: torch.Tensor) -> torch.Tensor:
        buffers = self.state.setdefault(name, [None] * len(self.params))  # type: ignore[list-item]
        if buffers[index] is None:
            buffers[index] = torch.zeros_like(like)
        return buffers[index]

    def _weight_decay(self, param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if not self.nonzero["weight_decay"][0]:
            return grad
        return grad + self._per_member(self.h["weight_decay"], param) * param

    def _sgd(self, index: int, param: torch.Tensor, grad: torch.Tensor) -> None:
        grad = self._weight_decay(param, grad)
        some, every = self.nonzero["momentum"]
        if some:
            m = self._per_member(self.h["momentum"], param)
            buffers = self.state.setdefault("momentum_buffer", [None] * len(self.params))  # type: ignore[list-item]
            if buffers[index] is None:  # torch's first step: the buffer is the gradient itself
                buffers[index] = grad.detach().clone()
            else:
                buffers[index].mul_(m).add_(grad * self._per_member(1 - self.h["dampening"], param))
            buf = buffers[index]
            direction = grad + buf * m if self.switches["nesterov"] else buf
            # members without momentum take the plain gradient, as torch does for them
            grad = direction if every else torch.where(m != 0, direction, grad)
        param.addcmul_(grad, self._per_member(-self.h["lr"], param))

    def _adam(self, index: int, param: torch.Tensor, grad: torch.Tensor) -> None:
        lr, decay = self.h["lr"], self.h["weight_decay"]
        if self.kind is torch.optim.AdamW:
            if self.nonzero["weight_decay"][0]:
                param.mul_(self._per_member(1 - lr * decay, param))
        else:
            grad = self._weight_decay(param, grad)
        beta1, beta2 = self.h["beta1"], self.h["beta2"]
        exp_avg = self._buffer("exp_avg", index, param)
        exp_avg_sq = self._buffer("exp_avg_sq", index, param)
        exp_avg.lerp_(grad, self._per_member(1 - beta1, param))
        exp_avg_sq.mul_(self._per_member(beta2, param)).addcmul_(grad * self._per_member(1 - beta2, param), grad)
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        if self.switches["amsgrad"]:
            most = self._buffer("max_exp_avg_sq", index, param)
            torch.maximum(most, exp_avg_sq, out=most)
            second = most
        else:
            second = exp_avg_sq
        denom = (second.sqrt() / self._per_member(bias_correction2_sqrt, param)).add_(self._per_member(self.h["eps"], param))
        param.addcmul_(exp_avg / denom, self._per_member(-(lr / bias_correction1), param))

    def _rmsprop(self, index: int, param: torch.Tensor, grad: torch.Tensor) -> None:
        grad = self._weight_decay(param, grad)
        alpha = self.h["alpha"]
        square_avg = self._buffer("square_avg", index, param)
        square_avg.mul_(self._per_member(alpha, param)).addcmul_(grad * self._per_member(1 - alpha, param), grad)
        if self.switches["centered"]:
            grad_avg = self._buffer("grad_avg", index, param)
            grad_avg.lerp_(grad, self._per_member(1 - alpha, param))
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg = avg.add_(self._per_member(self.h["eps"], param))
        neg_lr = self._per_member(-self.h["lr"], param)
        some, every = self.nonzero["momentum"]
        if some:
            momentum = self._per_member(self.h["momentum"], param)
            buf = self._buffer("momentum_buffer", index, param)
            buf.mul_(momentum).addcdiv_(grad, avg)
            param.addcmul_(buf if every else torch.where(momentum > 0, buf, grad / avg), neg_lr)
        else:
            param.addcmul_(grad / avg, neg_lr)

    def restore(self, steps: int) -> None:
        """The holders' state, stacked: resumed members' optimisers loaded from their checkpoints
        (Member.load_training_state) at `steps` updates. The inverse of load_into; a member without
        a buffer (no momentum) gets zeros, which its update never reads."""
        states = [[h.state.get(p, {}) for p in h.param_groups[0]["params"]] for h in self.holders]
        names = sorted({name for member in states for state in member for name in state if name != "step"})
        if not names:
            return
        self.steps = steps
        for name in names:
            self.state[name] = [
                torch.stack([member[index][name].to(param.dtype) if name in member[index] else torch.zeros_like(param[0])
                             for member in states])
                for index, param in enumerate(self.params)]

    def keep(self, rows: list[int], params: Sequence[torch.Tensor]) -> None:
        """Only the members `rows` from now on (the population released the others): their holders,
        their rows of the state, `params` (the shrunk stacked parameters)."""
        self.holders = [self.holders[i] for i in rows]
        self.params = list(params)
        index = torch.tensor(rows, dtype=torch.long, device=self.params[0].device)
        self.state = {name: [b.index_select(0, index) if b is not None else None for b in buffers] for name, buffers in self.state.items()}
        self._host_values = None
        self.refresh()

    # ---- a member's state as its own torch optimiser holds it ----
    def load_into(self, member: int) -> torch.optim.Optimizer:
        """Member `member`'s slice of the state written into its holder (copies, so that its
        state_dict saves that member alone); returns the holder."""
        holder = self.holders[member]
        group = holder.param_groups[0]
        if self.steps == 0:  # torch creates its state at the first step
            return holder
        for index, param in enumerate(group["params"]):
            state = {}
            if self.kind in (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop):
                state["step"] = torch.tensor(float(self.steps), dtype=torch.float64 if param.dtype == torch.float64 else torch.float32)
            for name, buffers in self.state.items():
                if name == "momentum_buffer" and hyper(group, "momentum") == 0:
                    continue  # torch keeps no buffer for a member without momentum
                if buffers[index] is not None:
                    state[name] = buffers[index][member].clone()
            if state:
                holder.state[param] = state
        return holder
