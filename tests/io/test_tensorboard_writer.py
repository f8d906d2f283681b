"""io::TensorBoardWriter writes event files that TensorBoard reads: the scalars and the image that
sdtune_tensorboard_dump logs come back from TensorBoard's own EventAccumulator, and every record's
TFRecord framing and CRC-32C checksums are checked here independently of sdtune's code."""

import io
import os
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2
from binaries import built_binary

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dump_bin():
    return built_binary("sdtune_tensorboard_dump")


@pytest.fixture(scope="module")
def logdir(dump_bin, tmp_path_factory):
    """A fresh logs/ folder (created by the writer, parents too) with the driver's one event file."""
    logs = tmp_path_factory.mktemp("tb") / "out" / "logs"
    proc = subprocess.run([str(dump_bin), "--dir", str(logs)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    files = list(logs.iterdir())
    assert [str(f) for f in files] == [proc.stdout.strip()]
    return logs


# CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: slow, but plainly the spec.
def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: Path):
    """The data of each TFRecord in `path`, both CRCs checked; the file must end after the last."""
    data = path.read_bytes()
    pos, records = 0, []
    while pos < len(data):
        assert len(data) - pos >= 12, f"truncated record header at byte {pos}"
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert length_crc == masked(crc32c(header)), f"bad length CRC at byte {pos}"
        body = data[pos + 12 : pos + 12 + length]
        assert len(body) == length and len(data) >= pos + 16 + length, f"truncated record at byte {pos}"
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert body_crc == masked(crc32c(body)), f"bad data CRC at byte {pos}"
        records.append(body)
        pos += 16 + length
    return records


def expected_pattern(height=8, width=12):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([20 * x, 30 * y, np.where((x + y) % 2 == 0, 255, 0)], axis=-1).astype(np.uint8)


def test_crc32c_reference():
    assert crc32c(b"123456789") == 0xE3069283


def test_file_name_and_records(logdir):
    (path,) = logdir.iterdir()
    host = os.uname().nodename
    assert re.fullmatch(rf"events\.out\.tfevents\.\d+\.{re.escape(host)}\.\d+\.sdtune", path.name), path.name
    events = [event_pb2.Event.FromString(r) for r in read_records(path)]
    assert events[0].file_version == "brain.Event:2"
    assert all(e.HasField("summary") for e in events[1:])
    assert len(events) == 1 + 5 * 2 + 1
    assert all(e.wall_time > 1.6e9 for e in events)


def test_tensorboard_reads_scalars(logdir):
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    assert acc.file_version == 2.0
    assert sorted(acc.Tags()["scalars"]) == ["train/loss", "train/lr"]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [0, 1, 2, 3, 4]
    # Stored as float32, as TensorBoard does.
    np.testing.assert_array_equal([e.value for e in loss], np.float32([1 / (s + 1) for s in range(5)]))
    lr = acc.Scalars("train/lr")
    assert [e.step for e in lr] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([e.value for e in lr], [1e-4 * (5 - s) / 5 for s in range(5)], rtol=1e-6)


def test_tensorboard_reads_image(logdir):
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    assert acc.Tags()["images"] == ["validation/grid"]
    (image,) = acc.Images("validation/grid")
    assert (image.step, image.height, image.width) == (4, 8, 12)
    png = Image.open(io.BytesIO(image.encoded_image_string))
    assert (png.format, png.mode, png.size) == ("PNG", "RGB", (12, 8))
    np.testing.assert_array_equal(np.asarray(png), expected_pattern())


def test_unwritable_dir_is_one_line_error(dump_bin, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    proc = subprocess.run([str(dump_bin), "--dir", str(blocker / "logs")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert str(blocker / "logs") in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
