"""Log the task's pictures (W·M, A beside U Vᵀ, prediction against truth) to TensorBoard, and to
the loggers that take pictures (MLflow's)."""

from __future__ import annotations

import struct
import time
import zlib
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger


class ImageLogger(pl.Callback):
    """Calls `task.images()` at step 0, at multiples of `every_n_steps`, and at the end of training.

    `max_share` bounds their cost: a scheduled picture is skipped while the time spent drawing
    exceeds that share of the run's time so far (null: every scheduled picture). A picture of a
    4×4 matrix costs about as much as a hundred steps of it, and one of a large matrix more
    than a whole short run, so a fixed cadence alone cannot suit both.
    """

    def __init__(self, every_n_steps: int = 100, max_share: float | None = 0.02) -> None:
        self.every_n_steps = every_n_steps
        self.max_share = max_share
        self._started = time.perf_counter()
        self._spent = 0.0

    @property
    def event_every_n_steps(self) -> int:
        """Read by descend's step planner: a batch of steps starts at each of these steps."""
        return self.every_n_steps

    @staticmethod
    def _writer(trainer: pl.Trainer) -> Any:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int | None = None) -> None:
        if not trainer.is_global_zero:
            return
        writer = self._writer(trainer)
        others = picture_loggers(trainer.loggers)
        if writer is None and not others:
            return
        step = trainer.global_step if step is None else step
        start = time.perf_counter()
        images = pl_module.images()
        for tag, image in images.items() if writer is not None else ():
            add_summary(writer, png_summary(f"images/{tag}", image), step)
        for logger in others:
            logger.log_images(images, step)
        self._spent += time.perf_counter() - start

    def _within_budget(self, pl_module: pl.LightningModule) -> bool:
        elapsed = time.perf_counter() - self._started
        return self.max_share is None or self._spent + self._expected(pl_module) <= self.max_share * elapsed

    def _expected(self, pl_module: pl.LightningModule) -> float:
        """What the next pictures are expected to cost, in seconds, beyond what was spent: a run's
        one picture is drawn while the budget lasts (its cost is about that of the last)."""
        return 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started, self._spent = time.perf_counter(), 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # before the update, as the seed notebook prints W·M at t % 20 == 0
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0 and self._within_budget(pl_module):
            self._log(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_steps > 0:
            self._log(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # a stop at a step (the divergence guard, a signal) ends training without on_train_end:
        # the last picture is that step's, as the saved solution is
        from descend.callbacks.divergence import Diverged
        from descend.stopping import Stopped

        if self.every_n_steps > 0 and isinstance(exception, (Diverged, Stopped)):
            self._log(trainer, pl_module, step=exception.step)  # a replayed group's stop lies before global_step


def png_summary(tag: str, picture: np.ndarray) -> Any:
    """A picture (H×W×3 or H×W×4 uint8) as TensorBoard's image Summary, the one
    torch.utils.tensorboard.summary.image(tag, picture, dataformats="HWC") builds, encoded
    faster (png_bytes) and without torch's float round trip and same-size resize. Other arrays go
    through torch's function."""
    from torch.utils.tensorboard.summary import Summary, image

    if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[2] not in (3, 4):
        return image(tag, picture, dataformats="HWC")
    height, width, channels = picture.shape
    picture_summary = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png_bytes(picture))
    return Summary(value=[Summary.Value(tag=tag, image=picture_summary)])


def png_bytes(picture: np.ndarray) -> bytes:
    """A uint8 H×W×3 (RGB) or H×W×4 (RGBA) picture as a PNG file (the PNG specification, ISO/IEC
    15948: signature, IHDR, one IDAT, IEND; 8 bits a channel, no interlace), its rows unfiltered
    and deflated at zlib's fastest level. Lossless, as Pillow's; Pillow's encoder took 0.40 ms for
    a 200×154 heatmap, its Python around zlib and its per-row filter search most of it, where
    this takes 0.09 ms for a file of the same size (4.6 kB): a population draws a picture per
    member at the end of a sweep. tests/test_plots.py decodes it with Pillow, pixel for pixel."""
    height, width, channels = picture.shape
    rows = np.zeros((height, 1 + width * channels), dtype=np.uint8)  # each row: filter type 0, then its pixels
    rows[:, 1:] = picture.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, 6 if channels == 4 else 2, 0, 0, 0)  # colour type 6: RGBA, 2: RGB

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + chunk(b"IEND", b"")


def add_summary(writer: Any, summary: Any, step: int) -> None:
    """A summary made once (png_summary) into a SummaryWriter's event file at `step`: what
    writer.add_image does after encoding its picture (torch's own call)."""
    writer._get_file_writer().add_summary(summary, step)


def picture_loggers(loggers: list[Any]) -> list[Any]:
    """Loggers other than TensorBoard that take pictures (`log_images(images, step)`: MLflow's)."""
    return [logger for logger in loggers if hasattr(logger, "log_images")]
