"""Lightning callbacks of descend; the Lightning ones (LR monitor, progress bar) are configured in conf/callbacks/."""

from descend.callbacks.checkpoint import Checkpoint
from descend.callbacks.divergence import Diverged, DivergenceGuard
from descend.callbacks.images import ImageLogger

__all__ = ["Checkpoint", "Diverged", "DivergenceGuard", "ImageLogger"]
