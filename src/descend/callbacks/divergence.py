"""Stop a run at the first step whose loss stops being finite or explodes."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch

from descend.errors import UserError
from descend.replay import replay_to
from descend.stepping import first_bad_step


class Diverged(UserError):
    """Training diverged: the run ends with status `diverged` at `step`, where the loss was `loss`."""

    def __init__(self, message: str, step: int, loss: float) -> None:
        super().__init__(message)
        self.step = step
        self.loss = loss


class DivergenceGuard(pl.Callback):
    """Raises `Diverged` at the first step whose loss is NaN or infinite, or whose size passed
    `max_growth` times max(|first loss|, 1) (an explosion that has not overflowed yet).

    Lightning's EarlyStopping(check_finite=True) only looks at epoch ends; a diverging
    gradient descent overflows within a few steps, so this checks every `every_n_steps` steps.
    descend's step hands over the losses of a whole batch of steps: they are checked on the
    device and read back once per batch, and the step reported is the exact one.
    """

    def __init__(self, every_n_steps: int = 1, max_growth: float | None = 1e6) -> None:
        self.every_n_steps = every_n_steps
        self.max_growth = max_growth
        self.first_loss: float | None = None

    def limit(self) -> float | None:
        # scaled by at least 1: a loss that starts at (or can pass through) zero is no explosion
        return None if self.max_growth is None or self.first_loss is None else self.max_growth * max(self.first_loss, 1.0)

    def is_bad(self, loss: float) -> bool:
        """Whether one step's loss (a host float) stops the run; the first loss seen sets the scale."""
        if self.first_loss is None:
            self.first_loss = abs(loss)
        limit = self.limit()
        return not math.isfinite(loss) or (limit is not None and abs(loss) > limit)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # descend's step checks every step on the CPU itself (stepping.run_group), before the update
        state = getattr(pl_module, "step_state", None)
        if state is not None and self.every_n_steps >= 1:
            state.guard = self

    def find(self, losses: torch.Tensor, first_step: int) -> tuple[int, float, bool] | None:
        """The first bad step of a group of losses, its loss and whether it exploded (rather
        than overflowed); None when all are healthy. Remembers the first loss it sees."""
        if self.first_loss is None:
            self.first_loss = abs(float(losses[0]))
        limit = self.limit()
        step = first_bad_step(losses, limit, self.every_n_steps, first_step)
        if step is None:
            return None
        loss = float(losses[step - first_step])
        return step, loss, limit is not None and math.isfinite(loss) and abs(loss) > limit

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.every_n_steps < 1 or not isinstance(outputs, dict) or "losses" not in outputs:
            return
        losses, first_step = outputs["losses"], outputs["first_step"]
        if "bad_step" in outputs:  # found by descend's step before that step's update: the state is that step's
            step, loss = outputs["bad_step"]
            limit = self.limit()
            found = (step, loss, limit is not None and math.isfinite(loss) and abs(loss) > limit)
        elif outputs.get("checked_on_host") or len(losses) == 0:
            found = None
        else:
            found = self.find(losses, first_step)
        # Data-parallel ranks decide together, or one would stop while the others wait for it.
        if not trainer.strategy.reduce_boolean_decision(found is not None, all=False):
            return
        if found is None:  # another rank's loss went bad: stop at this group's end
            last = first_step + len(losses) - 1
            found = (last, float(losses[-1]), False)
        step, loss, exploded = found
        # the logging steps before the blow-up, then its loss as the curve's last point
        pl_module.metric_buffer.flush(pl_module.writing_loggers(), through_step=step - 1)
        pl_module.log_to_loggers({"train/loss": torch.tensor(loss)}, step=step)
        # The parameters are that step's when descend's step stopped before its update (on the
        # CPU) or the group was replayed up to it (replay.py, a GPU); after a check of the whole
        # group elsewhere (closure, DDP) they are the group's last, named only when it was the bad step.
        exact = "bad_step" in outputs or replay_to(pl_module, step) or step == first_step + len(losses) - 1
        raise self.error(step, loss, exploded, pl_module, trainer.optimizers, check_parameters=exact)

    def error(self, step: int, loss: float, exploded: bool, task: Any, optimizers: list[Any], check_parameters: bool) -> Diverged:
        """The one-line error of a diverged run: where, how, and the learning rate to change."""
        bad_params = [name for name, p in task.named_parameters() if check_parameters and not torch.isfinite(p).all()]
        lrs = sorted({group["lr"] for opt in optimizers for group in opt.param_groups})
        lr = ",".join(f"{v:g}" for v in lrs)
        what = f"loss = {loss:g}" + (f", over {self.max_growth:g}x its starting size" if exploded else "")
        what += f", non-finite parameters: {', '.join(bad_params)}" if bad_params else ""
        theory = task.theory_summary() if hasattr(task, "theory_summary") else {}
        limit = theory.get("lr_limit")
        momenta = sorted({group.get("momentum", 0) for opt in optimizers for group in opt.param_groups})
        if theory and limit == 0 and momenta and momenta[-1] >= 1:  # theory.SGDStep.lr_limit: no lr converges
            return Diverged(f"training diverged at step {step} ({what}); optimizer.momentum={momenta[-1]:g} is 1 or more, "
                            "where heavy-ball momentum converges at no learning rate: take a momentum below 1", step=step, loss=loss)
        if limit and not math.isclose(limit, theory["lr_critical"], rel_tol=1e-12):  # momentum or weight decay: its own limit
            fix = f"lower it below lr_limit = {limit:.4g}, this optimiser's largest stable step size"
        elif theory:  # a quadratic task knows its largest stable step size
            fix = f"lower it below lr_critical = {theory['lr_critical']:.4g} (fastest: {theory['lr_optimal']:.4g})"
        else:
            fix = f"lower it (e.g. optimizer.lr={lrs[0] / 4:g}) or add a scheduler"
        return Diverged(
            f"training diverged at step {step} ({what}); the learning rate optimizer.lr={lr} is likely too large "
            f"for this task: {fix}",
            step=step,
            loss=loss,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"first_loss": self.first_loss}  # a resumed run keeps measuring growth from the same start

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.first_loss = state_dict.get("first_loss")
