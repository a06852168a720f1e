"""descend's event-file writing (dashboard.py) writes what TensorBoard's own writer writes."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto.summary_pb2 import Summary

import descend.dashboard  # noqa: F401 - swaps in the checksums and the in-place writer


def test_fast_event_checksums_are_tensorboards_own():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboards

    from descend.dashboard import masked_crc32c

    generator = random.Random(0)
    for size in (0, 1, 8, 100, 517, 4096):
        data = bytes(generator.randrange(256) for _ in range(size))
        assert masked_crc32c(data) == tensorboards(data), size


def events(step: int) -> event_pb2.Event:
    summary = Summary(value=[Summary.Value(tag="train/loss", simple_value=1.0 / (step + 1)), Summary.Value(tag="lr-SGD", simple_value=0.46)])
    return event_pb2.Event(wall_time=1000.0 + step, step=step, summary=summary)


def records(path: Path) -> list[bytes]:
    """The file's records (length, its checksum, data, its checksum), split by their lengths."""
    data, found, offset = path.read_bytes(), [], 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 8], "little")
        found.append(data[offset : offset + 16 + length])
        offset += 16 + length
    assert offset == len(data)
    return found


def test_summary_writers_write_in_place_the_bytes_tensorboards_thread_writes(tmp_path: Path):
    from tensorboard.summary.writer.event_file_writer import EventFileWriter as TensorBoards
    from torch.utils.tensorboard import SummaryWriter

    from descend.dashboard import RecordsInPlace

    ours = SummaryWriter(str(tmp_path / "ours"))
    in_place = ours.file_writer.event_writer._async_writer
    assert isinstance(in_place, RecordsInPlace)  # no writer thread
    theirs = TensorBoards(str(tmp_path / "theirs"))
    for step in range(300):
        ours.file_writer.event_writer.add_event(events(step))
        theirs.add_event(events(step))
    [mine], [reference] = (tmp_path / "ours").iterdir(), (tmp_path / "theirs").iterdir()
    assert len(records(mine)) == 301  # on disk as written: a running job's curves show, a killed one's stay
    theirs.flush()
    # the first record is the file's header event, stamped at its creation
    assert records(mine)[1:] == records(reference)[1:]
    ours.close()
    theirs.close()
    assert records(mine)[1:] == records(reference)[1:]
    with pytest.raises(OSError, match="closed"):
        in_place.write(b"late")


def test_tensorboards_reader_reads_what_the_in_place_writer_wrote(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(0, 50, 10):
            writer.add_scalar("train/loss", 2.0**-step, step)
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("train/loss")] == [(s, 2.0**-s) for s in range(0, 50, 10)]


def test_rows_written_together_are_the_events_torchs_writer_writes(tmp_path: Path):
    """stepping.write_rows (a member's logged steps, from one template per tag set, in one write)
    writes, row for row, the records SummaryWriter.add_summary writes: the same bytes but the
    time stamp, and each step's tags as tags.py files them."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from descend.stepping import Row, write_rows
    from descend.tags import tensorboard_tag

    generator = random.Random(1)
    rows = [(step, {"train/loss": generator.random(), "lr-SGD": 0.46, **({"ref/excess_loss": 1e-9} if step % 3 else {})})
            for step in range(0, 500, 10)]
    logger = TensorBoardLogger(str(tmp_path / "ours"), name="", version="")
    write_rows(logger, [(step, Row.of(row)) for step, row in rows[:20]])
    write_rows(logger, [(step, Row.of(row)) for step, row in rows[20:]])  # a later batch reuses the templates
    logger.experiment.flush()
    from torch.utils.tensorboard import SummaryWriter
    # torch's own path: a Summary built for the row, through the SummaryWriter's FileWriter

    theirs = SummaryWriter(str(tmp_path / "theirs"))
    for step, row in rows:
        summary = Summary(value=[Summary.Value(tag=tensorboard_tag(tag), simple_value=value) for tag, value in row.items()])
        theirs._get_file_writer().add_summary(summary, step)
    theirs.close()

    def read(folder: Path) -> list[bytes]:
        [path] = folder.glob("events.out.tfevents.*")
        events = [e for e in EventFileLoader(str(path)).Load() if e.HasField("summary")]
        for event in events:
            event.wall_time = 0.0
        return [e.SerializeToString() for e in events]

    ours = read(tmp_path / "ours")
    assert len(ours) == len(rows) and ours == read(tmp_path / "theirs")


def test_a_populations_records_are_the_proto_paths_byte_for_byte():
    """records.ScalarRecords (a step's rows of every member from one numpy array) gives, record
    for record, the framed bytes of the Event proto path (stepping.ScalarEvents + TensorBoard's
    framing): steps of every varint length and step 0 (left out of the proto), values that are
    NaN, ±inf, -0.0, subnormal, or beyond float32's range."""
    import numpy as np

    from descend.records import ScalarRecords, frame
    from descend.stepping import Row, ScalarEvents

    names = ("train/loss", "ref/excess_loss", "theory/excess_loss", "lr-SGD", "train/grad_norm", "train/log10_loss")
    ours, protos = ScalarRecords(names), ScalarEvents()
    generator = random.Random(3)
    specials = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e-40, 5e-324, 1e300, -1e300]
    for step in (0, 1, 127, 128, 16383, 16384, 2**35, 10):
        columns = np.array([[generator.choice([generator.uniform(-1e3, 1e3), generator.random(), *specials])
                             for _ in range(9)] for _ in names])
        records = ours.records(step, 1764500000.25, columns)
        assert len(records) == 9
        for member, record in enumerate(records):
            expected = frame(protos.event(step, Row(names, tuple(columns[:, member].tolist())), 1764500000.25))
            assert record == expected, (step, member)


@pytest.mark.parametrize("background", [False, True])
def test_the_hparams_file_holds_the_events_torchs_file_writer_writes(tmp_path: Path, background: bool):
    """dashboard.write_hparams (its records made here, the file put on disk now or by a writer
    thread at a population's end): the events torch's FileWriter writes for the same summaries,
    but for their wall times, in one file that replaces the run's earlier one."""
    import contextlib

    from torch.utils.tensorboard.writer import FileWriter

    from descend.dashboard import HPARAMS_SUFFIX, write_hparams
    from descend.hparams import summaries
    from descend.results import writes_in_background

    entry = summaries({"run": "00_optimizer.lr=0.1", "optimizer.lr": 0.1, "task": "inverse"}, ["final/loss"], {"run"}, True)
    reference = FileWriter(str(tmp_path / "theirs"), filename_suffix=HPARAMS_SUFFIX)
    for summary in entry:
        reference.add_summary(summary)
    reference.close()
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / f"events.out.tfevents.1.earlier.1.0{HPARAMS_SUFFIX}").write_bytes(b"an earlier session's entry")
    with writes_in_background() if background else contextlib.nullcontext():
        write_hparams(str(ours), entry)
    [mine], [theirs] = ours.iterdir(), (tmp_path / "theirs").iterdir()
    assert mine.name.endswith(HPARAMS_SUFFIX) and "earlier" not in mine.name

    def parsed(path: Path) -> list[event_pb2.Event]:
        out = []
        for record in records(path):
            event = event_pb2.Event.FromString(record[12:-4])
            event.wall_time = 0.0
            out.append(event)
        return out

    assert len(parsed(mine)) == len(entry) + 1 and parsed(mine) == parsed(theirs)
