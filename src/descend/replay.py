"""Exact stops inside a group of steps on a device whose losses are read once per group (a GPU).

On the CPU descend's step checks each loss on the host before the step's update (stepping.run_group):
reading a CPU tensor costs about a microsecond. On a GPU that read would wait for the device at
every step, so the divergence guard reads the group's losses once, after the group, and finds the
bad step there. By then the parameters are the group's last. To still end with the state of the
step that went bad, the group's starting state is kept (a device copy: no wait for the device)
and, once a bad step is found, restored and replayed up to that step. descend is deterministic
(the same ops in the same order on the same device), so the replay reaches exactly the state the
first pass had at that step.

Kept per group: the parameters, the optimiser's and the step schedulers' state and torch's random
state (dropout). Memory: one more copy of the parameters and optimiser state.
"""

from __future__ import annotations

import copy
from typing import Any

import torch


class GroupStart:
    """The state at the start of a group of steps (see module doc)."""

    def __init__(self, task: Any, optimizer: torch.optim.Optimizer, schedulers: list[Any], first_step: int) -> None:
        self.first_step = first_step
        with torch.no_grad():
            self.parameters = [p.detach().clone() for p in task.parameters()]
        self.optimizer = copy.deepcopy(optimizer.state_dict())
        self.schedulers = [copy.deepcopy(s.state_dict()) for s, _, _ in schedulers]
        self.cpu_rng = torch.get_rng_state()
        device = next(task.parameters()).device
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self, task: Any, optimizer: torch.optim.Optimizer, schedulers: list[Any]) -> None:
        with torch.no_grad():
            for parameter, saved in zip(task.parameters(), self.parameters):
                parameter.copy_(saved)
        optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        for (scheduler, _, _), saved in zip(schedulers, self.schedulers):
            scheduler.load_state_dict(copy.deepcopy(saved))
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, next(task.parameters()).device)


def replay_to(task: Any, step: int) -> bool:
    """Put the task back at the state of `step` (inside the group just run) by restoring the group's
    start and taking its first steps again, without logging them twice. False where no start was
    kept (the CPU checks each step itself; the closure path and data parallelism are not replayed)."""
    from descend.stepping import after_backward, step_scheduler, step_schedulers_due

    state = task.step_state
    start, batches = state.group_start, state.group_batches
    if start is None or not start.first_step <= step <= start.first_step + len(batches):
        return False
    raw = task.optimizers().optimizer
    schedulers = step_schedulers_due(task, "step")
    start.restore(task, raw, schedulers)
    state.logging = False  # these steps' metrics are logged already
    for index in range(step - start.first_step):  # the plain loop of stepping.run_group, as it ran
        state.step = start.first_step + index
        loss = task.loss(batches[index])
        raw.zero_grad()
        state.loss = loss.detach()
        loss.backward()
        after_backward(task, raw)
        raw.step()
        for scheduler, frequency, monitor in schedulers:
            if (state.step + 1) % frequency == 0:
                step_scheduler(task, scheduler, monitor)
    return True
