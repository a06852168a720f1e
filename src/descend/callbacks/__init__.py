"""Lightning callbacks of descend; the Lightning ones (checkpoints, LR monitor) are configured in conf/callbacks/."""

from descend.callbacks.divergence import Diverged, DivergenceGuard
from descend.callbacks.images import ImageLogger

__all__ = ["Diverged", "DivergenceGuard", "ImageLogger"]
