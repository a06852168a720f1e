"""Lightning callbacks of descend, configured in conf/callbacks/."""

from descend.callbacks.checkpoint import Checkpoint
from descend.callbacks.divergence import Diverged, DivergenceGuard
from descend.callbacks.images import ImageLogger
from descend.callbacks.progress import StepProgressBar
from descend.callbacks.sharpness import Sharpness
from descend.callbacks.sessions import Sessions

__all__ = ["Checkpoint", "Diverged", "DivergenceGuard", "ImageLogger", "Sessions", "Sharpness", "StepProgressBar"]
