"""TensorBoard's scalar events for a population's members, made for all of them at once.

Every member of a population logs a row of the same scalars at each logging step, each into its
own event file. Filling and serialising one Event proto per member and row, then framing it as a
TFRecord (length, checksum, data, checksum), was a Python loop of some 6 µs a row: a 1024-member
sweep logs 200,000 rows. Rows that share their names serialise to records of one layout, in which
only the wall time, the values and the data's checksum differ. So a step's records are the rows
of one numpy structured array (constant bytes in void fields, float32 values), and only the
checksum is computed record by record, by google-crc32c's C code.

The bytes are those torch's SummaryWriter writes for the same row, from Event(wall_time, step,
summary=Summary(value=[Summary.Value(tag, simple_value)])): protobuf's encoding (field 1, double
wall_time; field 2, varint step, left out at step 0 as proto3 leaves a default out; field 5, the
summary, whose values each hold field 1, the tag, and field 2, the float32 simple_value), framed
as tensorboard.summary.writer.record_writer.RecordWriter frames it.
tests/test_event_files.py checks them byte for byte against the proto path (stepping.ScalarEvents).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from descend.tags import tensorboard_tag


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def masked(crc: np.ndarray) -> np.ndarray:
    """TFRecord's masked CRC-32C (dashboard.masked_crc32c) of many checksums, [n] uint64 → uint32."""
    crc = crc.astype(np.uint64)
    return ((((crc >> np.uint64(15)) | ((crc << np.uint64(17)) & np.uint64(0xFFFFFFFF))) + np.uint64(0xA282EAD8))
            & np.uint64(0xFFFFFFFF)).astype(np.uint32)


class ScalarRecords:
    """The framed event records of rows of scalars named `names` (metric names, tags.py files
    them under TensorBoard's tags), for many rows at one step at once."""

    def __init__(self, names: Sequence[str]) -> None:
        self.prefixes = []  # each value's bytes before its float32
        for name in names:
            tag = tensorboard_tag(name).encode()
            value = b"\x0a" + varint(len(tag)) + tag + b"\x15"  # Summary.Value: tag, then simple_value's key
            self.prefixes.append(b"\x0a" + varint(len(value) + 4) + value)  # Summary's repeated value field
        self.summary_size = sum(len(p) + 4 for p in self.prefixes)
        self._layouts: dict[int, tuple[np.dtype, bytes, int]] = {}

    def _layout(self, step: int) -> tuple[np.dtype, bytes, bytes, int]:
        """The record's dtype, its constant head (length and its checksum) and the event's bytes
        between wall_time and the values; by the step's varint length (and step 0, left out)."""
        key = step if step < 1 else len(varint(step))
        if key not in self._layouts:
            middle_size = (1 + len(varint(step)) if step else 0) + 1 + len(varint(self.summary_size))
            size = 9 + middle_size + self.summary_size
            length = struct.pack("<Q", size)
            head = length + struct.pack("<I", _masked_one(length))
            fields = [("head", f"V{len(head)}"), ("wall_key", "V1"), ("wall", "<f8"), ("middle", f"V{middle_size}")]
            for index, prefix in enumerate(self.prefixes):
                fields += [(f"p{index}", f"V{len(prefix)}"), (f"v{index}", "<f4")]
            fields.append(("crc", "<u4"))
            self._layouts[key] = (np.dtype(fields), head, size)
        dtype, head, size = self._layouts[key]
        middle = (b"\x10" + varint(step) if step else b"") + b"\x2a" + varint(self.summary_size)
        return dtype, head, middle, size

    def records(self, step: int, wall_time: float, columns: np.ndarray) -> list[bytes]:
        """Each row's framed record: `columns` [names, rows] float64 (cast to float32, as the
        proto's simple_value is), all at `step` and `wall_time` (seconds since the epoch)."""
        dtype, head, middle, size = self._layout(step)
        rows = np.empty(columns.shape[1], dtype)
        rows["head"], rows["wall_key"], rows["wall"], rows["middle"] = head, b"\x09", wall_time, middle
        with np.errstate(over="ignore", invalid="ignore"):  # a diverged member's inf stays inf, as in the proto
            for index, prefix in enumerate(self.prefixes):
                rows[f"p{index}"] = prefix
                rows[f"v{index}"] = columns[index]
        data = rows.tobytes()
        start, width = len(head), dtype.itemsize
        rows["crc"] = masked(np.array([_crc(data[at + start : at + start + size]) for at in range(0, len(data), width)], dtype=np.uint64))
        data = rows.tobytes()
        return [data[at : at + width] for at in range(0, len(data), width)]


def frame(data: bytes) -> bytes:
    """A serialised event as a TFRecord, as TensorBoard's RecordWriter writes it."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_one(length)) + data + struct.pack("<I", _masked_one(data))


def _masked_one(data: bytes) -> int:
    crc = _crc(data)
    return (((crc >> 15) | ((crc << 17) & 0xFFFFFFFF)) + 0xA282EAD8) & 0xFFFFFFFF


def _crc(data: bytes) -> int:
    import google_crc32c

    return google_crc32c.value(data)
