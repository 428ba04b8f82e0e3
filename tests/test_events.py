"""rnnjax's own TensorBoard event files, checked against tensorboardX (an independent writer and
protobuf parser) and the CRC-32C check value."""

import os
import struct

import pytest

from rnnjax import _events, engine


def test_crc32c_check_value_and_the_tfrecord_mask():
    assert _events.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
    from tensorboardX.record_writer import masked_crc32c

    for data in (b"", b"a", struct.pack("<Q", 1234), bytes(range(256))):
        assert _events.masked_crc32c(data) == masked_crc32c(data)


def test_our_files_parse_with_tensorboardx_protobufs(tmp_path):
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    w = _events.EventWriter(tmp_path, purge_step=7)
    w.scalars(7, {"train/loss": 0.25, "eval/accuracy": 1.0})
    w.scalars(2**40, {"train/loss": -3.5e-8})
    w.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    data, pos, events = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos:pos + 8]
        (n,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
        body = data[pos + 12:pos + 12 + n]
        assert struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])[0] == masked_crc32c(body)
        ev = event_pb2.Event()
        ev.ParseFromString(body)
        events.append(ev)
        pos += 16 + n
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 7 and events[1].session_log.status == event_pb2.SessionLog.START
    assert [(v.tag, v.simple_value) for v in events[2].summary.value] == [("train/loss", 0.25),
                                                                          ("eval/accuracy", 1.0)]
    assert events[3].step == 2**40
    assert events[3].summary.value[0].simple_value == pytest.approx(-3.5e-8, rel=1e-7)
    assert all(ev.wall_time > 1.6e9 for ev in events)


def test_read_events_reads_tensorboardx_files_with_a_purge(tmp_path):
    from tensorboardX import SummaryWriter

    first = SummaryWriter(str(tmp_path))
    for s in range(1, 6):
        first.add_scalar("loss", 1.0 / s, global_step=s)
    first.close()
    (old,) = tmp_path.glob("events.out.tfevents.*")
    os.utime(old, (old.stat().st_mtime - 10, old.stat().st_mtime - 10))  # written before the resume
    # a resume from the checkpoint at step 2
    resumed = SummaryWriter(str(tmp_path), purge_step=3, filename_suffix=".resumed")
    for s in range(3, 5):
        resumed.add_scalar("loss", 10.0 + s, global_step=s)
    resumed.close()
    got = engine.read_events(tmp_path)
    assert got == {"loss": [(1, 1.0), (2, 0.5), (3, 13.0), (4, 14.0)]}


def test_a_record_cut_by_a_kill_is_dropped(tmp_path):
    w = _events.EventWriter(tmp_path)
    w.scalars(1, {"loss": 2.0})
    w.scalars(2, {"loss": 1.0})
    w.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    path.write_bytes(path.read_bytes()[:-5])
    assert engine.read_events(tmp_path) == {"loss": [(1, 2.0)]}
