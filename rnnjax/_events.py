"""TensorBoard event files, written and read without TensorFlow, tensorboardX or protobuf.

An event file is a sequence of TFRecords: ``uint64 length``, ``uint32 masked_crc32c(length)``,
the bytes of an ``Event`` protocol buffer, ``uint32 masked_crc32c(bytes)`` (little-endian). The
engine logs scalars only, so three messages of TensorFlow's ``event.proto`` / ``summary.proto``
are enough:

    Event      { double wall_time = 1; int64 step = 2; string file_version = 3;
                 Summary summary = 5; SessionLog session_log = 7; }
    Summary    { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
    SessionLog { SessionStatus status = 1; }   (START = 1: TensorBoard drops the steps >= step)

Writing them by hand keeps ``fit`` from importing tensorboardX, which imports torch when torch is
installed (seconds at every start).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# ------------------------------------------------------------------------------ CRC-32C


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli polynomial, reflected
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord frames use it."""
    c = 0xFFFFFFFF
    for byte in data:
        c = _TABLE[(c ^ byte) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the record, its masked CRC."""
    header = struct.pack("<Q", len(record))
    return (header + struct.pack("<I", masked_crc32c(header)) + record
            + struct.pack("<I", masked_crc32c(record)))


# ------------------------------------------------------------------------ protobuf wire format


def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF  # int64 fields: two's complement, as protobuf encodes negatives
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def event(step: int, *, wall_time: float | None = None, scalars: Mapping[str, float] | None = None,
          file_version: str | None = None, session_start: bool = False) -> bytes:
    """The bytes of one ``Event`` message."""
    out = _field(1, 1) + struct.pack("<d", time.time() if wall_time is None else wall_time)
    out += _field(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", v))
                          for tag, v in scalars.items())
        out += _bytes_field(5, values)
    if session_start:
        out += _bytes_field(7, _field(1, 0) + _varint(1))
    return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, pos


def _fields(buf: bytes) -> Iterator[tuple[int, Any]]:
    """``(number, value)`` of each field of a message: ints for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in an event record")
        yield number, value


def parse_event(buf: bytes) -> dict:
    """``{"step", "wall_time", "scalars": {tag: value}, "session_start"}`` of one ``Event``."""
    out: dict = {"step": 0, "wall_time": 0.0, "scalars": {}, "session_start": False}
    for number, value in _fields(buf):
        if number == 1:
            out["wall_time"] = struct.unpack("<d", value)[0]
        elif number == 2:
            out["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 5:
            for n, v in _fields(value):
                if n != 1:
                    continue
                tag, val = None, None
                for m, w in _fields(v):
                    if m == 1:
                        tag = w.decode()
                    elif m == 2:
                        val = struct.unpack("<f", w)[0]
                if tag is not None and val is not None:
                    out["scalars"][tag] = val
        elif number == 7:
            out["session_start"] = any(m == 1 and w == 1 for m, w in _fields(value))
    return out


def records(data: bytes) -> Iterator[bytes]:
    """The records of an event file's bytes; stops at a record cut short (a killed writer)."""
    pos = 0
    while pos + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        body = data[pos + 12:pos + 12 + n]
        if len(body) < n:
            return
        pos += 12 + n + 4
        yield body


# ------------------------------------------------------------------------------- the writer


class EventWriter:
    """Appends scalar events to ``logdir/events.out.tfevents.<time>.<host>.<pid>``.

    With ``purge_step`` (a resumed run), the file starts with a session-start event at that step,
    so TensorBoard hides the events a killed process wrote at and after it.
    """

    def __init__(self, logdir: str | os.PathLike, *, purge_step: int | None = None):
        Path(logdir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        self.path = Path(logdir) / name
        self._fh = open(self.path, "ab")
        step = 0 if purge_step is None else purge_step
        self._fh.write(frame(event(step, file_version="brain.Event:2")))
        if purge_step is not None:
            self._fh.write(frame(event(purge_step, session_start=True)))
        self._fh.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._fh.write(frame(event(step, scalars=values)))

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
