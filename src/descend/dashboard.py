"""What TensorBoard shows of a run beyond its curves and pictures: the logger writing into the run
folder, the custom-scalars page, and, at the end, the final metrics, the config and the HPARAMS entry."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from descend import configtext
from descend.stepping import write_scalars

# The CUSTOM SCALARS tab: one page, its charts side by side, each plotting every run that has its
# tag. One quantity a chart: a sweep's 16 runs are 16 lines, one colour each (three quantities in
# one chart were 48 lines in 16 colours). A run's layout holds the charts of the curves it logs
# (layout), and TensorBoard merges the runs' layouts, so no chart is empty whatever the tasks.
PAGE = "descend: loss, distance to the optimum, learning rate"
CHARTS = (
    ("log10 loss", r"^descent/train/log10_loss$"),
    ("log10 relative error to the closed form", r"^distance/ref/log10_rel_error$"),
    ("log10 excess loss over the optimum", r"^distance/ref/log10_excess_loss$"),
    ("log10 excess loss theory predicts", r"^distance/theory/log10_excess_loss$"),
    ("log10 eigenvalue relative error", r"^distance/ref/log10_eigenvalue_rel_error$"),
    ("log10 eigenvalue relative error, power method", r"^distance/baseline/log10_eigenvalue_rel_error$"),
    ("sharpness and its stability threshold", r"^stability/curvature/(sharpness|threshold)$"),  # callbacks.sharpness
    ("learning rate", r"^lr-"),  # every optimiser's name and parameter group: lr-SGD, lr-Adam/pg2
)


def layout(names: list[str]) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars page of a run whose curves have these metric names (tags.py files them)."""
    return copy.deepcopy(_layout(tuple(names)))


@functools.lru_cache(maxsize=64)
def _layout(names: tuple[str, ...]) -> dict[str, dict[str, list[Any]]]:
    # once for a population's members, which log the same names (76 pattern searches a member)
    import re

    from descend.tags import tensorboard_tag

    tags = [tensorboard_tag(name) for name in names]
    charts = {title: ["Multiline", [pattern]] for title, pattern in CHARTS if any(re.search(pattern, tag) for tag in tags)}
    return {PAGE: charts}


def masked_crc32c(data: bytes) -> int:
    """TensorBoard's record checksum (tensorboard.compat...pywrap_tensorflow.masked_crc32c), with
    the CRC-32C from google-crc32c's C code instead of a Python loop over the bytes."""
    from descend.records import _masked_one

    return _masked_one(bytes(data))


def use_fast_checksums() -> None:
    """Without TensorFlow, TensorBoard's writer computes every event's checksum in pure Python:
    about 45 µs for a row of scalars. For one run that is noise; a population sweep writes dozens
    of runs at once, and there it was most of the cost of logging. The writer module looks the
    function up at each record, so replacing it there is enough; the files are byte for byte the
    same (tests/test_event_files.py)."""
    from tensorboard.summary.writer import record_writer

    record_writer.masked_crc32c = masked_crc32c


class RecordsInPlace:
    """What TensorBoard's _AsyncWriter does for an event file (write, flush, close), in the calling
    thread, through one open file. TensorBoard's own (without TensorFlow) hands every event to a
    thread of its writer's, which opens the file, appends the record and closes it again: five
    system calls and two thread switches an event. One run hardly notices; a population's 64
    writers woke 64 threads that fought the training thread for the GIL (950,000 futex calls in
    a 2000-step sweep). The bytes are the same, and each record still reaches the file as it is
    written (write_records: the records of a batch's logged steps together), so TensorBoard shows
    a running job's curves as before and a killed process loses none of them."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "ab")  # noqa: SIM115 - closed by close(), as the writer's file is

    def write(self, data: bytes) -> None:
        self.write_records([data])

    def write_records(self, records: list[bytes]) -> None:
        """Records (serialised events), each framed as TensorBoard's RecordWriter frames it,
        reaching the file together (the whole of them, however many system calls it takes)."""
        from descend.records import frame

        self.write_framed(b"".join(frame(data) for data in records))

    def write_framed(self, data: bytes) -> None:
        """Framed records (records.py) reaching the file together."""
        if self._file.closed:
            raise OSError("Writer is closed")  # as _AsyncWriter says it
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as error:  # a full disk: name the file in the run's one-line error
            error.filename = error.filename or self._file.name
            raise

    def flush(self) -> None:
        pass  # every record is written through

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as error:  # what a full disk kept in the buffer: name the file, as write does
            error.filename = error.filename or self._file.name
            raise


def write_records(file_writer: Any, records: list[bytes]) -> None:
    """Serialised events into a SummaryWriter's event file (its FileWriter): in one write where
    the file is written in place (RecordsInPlace), else one by one through TensorBoard's writer."""
    sink = file_writer.event_writer._async_writer
    if isinstance(sink, RecordsInPlace):
        sink.write_records(records)
    else:
        for data in records:
            sink.write(data)


def in_place_sink(file_writer: Any) -> RecordsInPlace | None:
    """The FileWriter's RecordsInPlace, which takes framed records (records.py); None for another sink."""
    sink = file_writer.event_writer._async_writer
    return sink if isinstance(sink, RecordsInPlace) else None


def event_file_path(logdir: str, suffix: str = "") -> str:
    """A new event file's path, named as TensorBoard's EventFileWriter names it."""
    import socket
    import time

    from tensorboard.summary.writer import event_file_writer

    name = "events.out.tfevents.%010d.%s.%s.%s" % (time.time(), socket.gethostname(), os.getpid(), event_file_writer._global_uid.get())
    return os.path.join(logdir, name) + suffix


def first_event() -> Any:
    """The event EventFileWriter opens a file with: the file version and the writer's name."""
    import time

    from tensorboard.compat.proto import event_pb2

    return event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2",
                           source_metadata=event_pb2.SourceMetadata(writer="tensorboard.summary.writer.event_file_writer"))


def write_events_in_place() -> None:
    """Event files on local disk are written by RecordsInPlace: torch's SummaryWriter (which
    Lightning's TensorBoardLogger holds) builds its EventFileWriter from this module-level name."""
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from torch.utils.tensorboard import writer

    class LocalEventFileWriter(EventFileWriter):
        def __init__(self, logdir: str, max_queue_size: int = 10, flush_secs: int = 120, filename_suffix: str = "") -> None:
            if "://" in str(logdir):  # a remote store keeps TensorBoard's own writer
                super().__init__(logdir, max_queue_size, flush_secs, filename_suffix)
                return
            # EventFileWriter.__init__ without its writer thread (started and stopped again for each
            # writer, two a population member) or its first open of the file: the same name, the same first event
            self._logdir = str(logdir)
            os.makedirs(self._logdir, exist_ok=True)
            self._file_name = event_file_path(self._logdir, filename_suffix)
            self._async_writer = RecordsInPlace(self._file_name)
            self.add_event(first_event())

    writer.EventFileWriter = LocalEventFileWriter


use_fast_checksums()
write_events_in_place()


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoard logger, leaving out the hparams.yaml Lightning writes at the first
    checkpoint: descend logs the hyper-parameters at the end, so that file would be empty, and
    the run's config is already in .hydra/. With `name: ""` and `version: ""` the event files go
    straight into the run folder, which TensorBoard then names the run by."""

    def save(self) -> None:
        super(LightningTensorBoardLogger, self).save()  # Fabric's: flush the events

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Lightning's end of fit, without closing the event file: descend writes the run's final/*
        scalars, config text and HPARAMS entry after it (results.write_results), and torch's
        SummaryWriter, once closed, would open a second event file for them (a single run's folder
        held two where a population member's, never finalized by Lightning, holds one). close()
        closes it."""
        if self._experiment is not None:
            self.experiment.flush()

    def close(self, status: str = "success") -> None:
        """Lightning's finalize: the event file flushed and closed."""
        super().finalize(status)


def close_event_file(logger: Any) -> None:
    """The event file of descend's TensorBoardLogger closed (its finalize keeps it open)."""
    if isinstance(logger, TensorBoardLogger):
        logger.close()


def tensorboard_loggers(loggers: list[Any]) -> list[LightningTensorBoardLogger]:
    return [logger for logger in loggers if isinstance(logger, LightningTensorBoardLogger)]


def write_layout(loggers: list[Any], names: list[str]) -> None:
    """The custom-scalars page, written when the run starts so that a running sweep shows it
    (Task.start_dashboard), with the charts of the curves named: SummaryWriter.add_custom_scalars's
    summary, made once for a population's members. On data-parallel ranks other than 0,
    Lightning's `experiment` is a stand-in that writes nothing."""
    from torch.utils.tensorboard import SummaryWriter

    from descend.lightning_internals import tensorboard_file_writer

    for logger in tensorboard_loggers(loggers):
        if isinstance(logger.experiment, SummaryWriter):
            tensorboard_file_writer(logger).add_summary(_layout_summary(tuple(names)))
        else:
            logger.experiment.add_custom_scalars(layout(names))


@functools.lru_cache(maxsize=64)
def _layout_summary(names: tuple[str, ...]) -> Any:
    from torch.utils.tensorboard.summary import custom_scalars

    return custom_scalars(_layout(names))


def log_to_tensorboard(loggers: list[Any], cfg: DictConfig, record: dict[str, Any], run_name: str, chosen: list[str]) -> None:
    """The config as text (hparams.shown_config); the final metrics as scalars at the run's last
    step, where the curves they summarise end; and the HPARAMS entry (hparams.py): the settings,
    the keys `chosen` on the command line marked as what tells the runs apart, and those metrics,
    which the HPARAMS tab reads from the final/* scalars."""
    from descend import hparams

    shown = hparams.shown_config(cfg)
    values = hparams.with_chosen(hparams.hyperparameters(shown, record["task"], run_name), shown, chosen)
    metrics = hparams.ordered_metrics(record)
    differing = {"run", *chosen}
    for logger in tensorboard_loggers(loggers):
        writer = logger.experiment
        writer.add_text("config", "    " + configtext.yaml_text(shown).replace("\n", "\n    "))
        write_scalars(logger, metrics, record["steps"])
        write_hparams(logger.log_dir, hparams.summaries(values, list(metrics), differing, record["status"] == "completed"))
        logger.finalize("success" if record["status"] == "completed" else "failed")


HPARAMS_SUFFIX = ".hparams"


def write_hparams(log_dir: str, summaries: Any) -> None:
    """The HPARAMS entry (the experiment, the session's start and its end) in an event file of its
    own, replacing the one an earlier session of the run wrote. TensorBoard keeps the first
    description it reads of a tag and a resume cannot purge it, so an entry in the main event
    file would show the configuration the run first ended with, not the one it finished with.
    On local disk the file holds the records torch's FileWriter writes (its first event, then one
    per summary), made here and put on disk by results.write_in_folder: by a writer thread at a
    population's end, where creating a file is most of its cost."""
    import time

    from torch.utils.tensorboard.writer import FileWriter

    from descend.records import frame
    from descend.results import write_in_folder

    if "://" in str(log_dir):  # a remote store: TensorBoard's own writer
        writer = FileWriter(log_dir, filename_suffix=HPARAMS_SUFFIX)
        for summary in summaries:
            writer.add_summary(summary)
        writer.close()
        return
    from tensorboard.compat.proto.event_pb2 import Event

    path = event_file_path(str(log_dir), HPARAMS_SUFFIX)
    data = b"".join(frame(event.SerializeToString())
                    for event in (first_event(), *(Event(summary=summary, wall_time=time.time()) for summary in summaries)))
    write_in_folder(Path(path), lambda: _replace_hparams(Path(path), data))


def _replace_hparams(path: Path, data: bytes) -> None:
    from descend.results import replace_file

    for old in path.parent.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"):
        old.unlink()
    replace_file(path, lambda handle: handle.write(data))
