"""Core contracts: storage, ids, record schemas, the v1 motion file, rotation conventions."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from humove import ids
from humove.motion import rotations as rot
from humove.schemas.motion import MotionClip, MotionFileError, load_motion, motion_to_bytes
from humove.schemas.records import RecordSchema, RecordSchemaError
from humove.storage import Storage

SCHEMA = RecordSchema("demo", 1, "clip_id", (pa.field("score", pa.float64()),))


@pytest.mark.parametrize("root", ["local", "memory://core-test"])
def test_storage_atomic_writes_list_and_delete(tmp_path, root):
    storage = Storage(str(tmp_path) if root == "local" else root)
    url = storage.join("a", "b.bin")
    storage.write_bytes(url, b"hello")
    assert storage.read_bytes(url) == b"hello"
    assert storage.list(storage.join("a")) == [url]  # no temp file left behind
    source = tmp_path / "src.txt"
    source.write_text("x")
    copied = storage.put_file(str(source), storage.join("a", "c.txt"))
    assert storage.read_text(copied) == "x"
    assert storage.list(storage.join("a"), ".txt") == [copied]
    streamed = storage.write_with(storage.join("a", "d.bin"), lambda handle: [handle.write(b"ab"), handle.write(b"c")])
    assert storage.read_bytes(streamed) == b"abc"

    def broken(handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        storage.write_with(storage.join("a", "e.bin"), broken)
    assert storage.list(storage.join("a"), ".bin") == [url, streamed]  # nothing published, no temp file left
    storage.delete(storage.join("a"), recursive=True)
    assert not storage.exists(url) and storage.list(storage.join("a")) == []


def test_ids_are_deterministic_and_content_based(tmp_path):
    a, b = tmp_path / "a name.mp4", tmp_path / "b.mp4"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert ids.video_id_from_file(str(a)) == ids.video_id_from_file(str(b))
    assert ids.video_id_from_url("https://x/y") == ids.video_id_from_url(" https://x/y ")
    clip = ids.clip_id("v0123", 10, 250)
    assert clip == "v0123-0000010-0000250" and "." not in clip


def row(**extra):
    from datetime import UTC, datetime

    base = {"id": "c1", "input_id": "v1", "status": "ok", "attempt": 1, "stage_version": "1",
            "schema_version": 1, "created_at": datetime(2026, 1, 1, tzinfo=UTC), "score": 0.5}
    return {**base, **extra}


def test_record_schema_enforced_on_write_and_read():
    table = SCHEMA.to_table([row()])
    assert table.schema.metadata[b"humove.schema_version"] == b"1"
    with pytest.raises(RecordSchemaError, match="unknown columns"):
        SCHEMA.to_table([row(bogus=1)])
    with pytest.raises(RecordSchemaError, match="status"):
        SCHEMA.to_table([row(status="maybe")])
    with pytest.raises(RecordSchemaError, match="do not fit"):
        SCHEMA.to_table([row(score="high")])
    # Arrow alone would store 2 for 2.7: a non-whole float in an integer column is refused, a whole one kept.
    with pytest.raises(RecordSchemaError, match="'attempt' is an integer column, got 2.7"):
        SCHEMA.to_table([row(attempt=2.7)])
    with pytest.raises(RecordSchemaError, match="integer column, got"):
        SCHEMA.to_table([row(attempt=np.float32("nan"))])
    assert SCHEMA.to_table([row(attempt=3.0)])["attempt"].to_pylist() == [3]
    with pytest.raises(RecordSchemaError, match="missing columns"):
        SCHEMA.check(table.drop_columns(["score"]))
    newer = table.replace_schema_metadata({b"humove.schema_version": b"2"})
    with pytest.raises(RecordSchemaError, match="schema version 2"):
        SCHEMA.check(newer)
    with pytest.raises(RecordSchemaError, match="reserved"):
        RecordSchema("bad", 1, "clip_id", (pa.field("status", pa.string()),))


def make_motion(frames=5):
    rng = np.random.default_rng(0)
    return MotionClip(
        betas=rng.normal(size=(frames, 10)).astype(np.float32),
        global_orient=rng.normal(size=(frames, 3)).astype(np.float32),
        body_pose=rng.normal(size=(frames, 23, 3)).astype(np.float32) * 0.2,
        transl=rng.normal(size=(frames, 3)).astype(np.float32),
        joints=rng.normal(size=(frames, 24, 3)).astype(np.float32),
        focal=np.full(frames, 1000, np.float32),
        image_size=np.array([480, 832], np.int32),
        valid=np.ones(frames, bool),
        fps=16.0,
        body_model="standin-smpl",
    )


def test_motion_file_round_trip_and_validation():
    clip = make_motion()
    loaded = load_motion(motion_to_bytes(clip))
    assert loaded.fps == 16.0 and loaded.body_model == "standin-smpl"
    np.testing.assert_array_equal(loaded.body_pose, clip.body_pose)
    bad = make_motion()
    bad.body_pose = bad.body_pose[:, :22]
    with pytest.raises(MotionFileError, match="body_pose"):
        motion_to_bytes(bad)
    bad = make_motion()
    bad.transl[2, 0] = np.nan
    with pytest.raises(MotionFileError, match="NaN"):
        motion_to_bytes(bad)


def test_rotation_conventions_round_trip():
    torch.manual_seed(0)
    axis_angle = torch.randn(64, 3, dtype=torch.float64)
    axis_angle = axis_angle / axis_angle.norm(dim=-1, keepdim=True) * torch.rand(64, 1, dtype=torch.float64) * 3.1
    matrix = rot.axis_angle_to_matrix(axis_angle)
    assert torch.allclose(matrix @ matrix.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(64, 3, 3),
                          atol=1e-10)
    assert torch.allclose(rot.matrix_to_axis_angle(matrix), axis_angle, atol=1e-8)
    six = rot.matrix_to_rot6d(matrix)
    assert torch.equal(six[:, :3], matrix[:, :, 0]), "6D holds the first two columns"
    assert torch.allclose(rot.rot6d_to_matrix(six), matrix, atol=1e-12)
    # A rotation of 90° about z maps x to y.
    quarter = rot.axis_angle_to_matrix(torch.tensor([0.0, 0.0, np.pi / 2], dtype=torch.float64))
    assert torch.allclose(quarter @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                          torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12)


def test_a_failed_local_write_leaves_no_temp_file_and_names_its_target(tmp_path, monkeypatch):
    import errno
    import os

    import humove.storage

    storage = Storage(str(tmp_path))
    url = storage.join("stage", "part-1.parquet")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")  # as fsync reports it: no file named

    monkeypatch.setattr(humove.storage.os, "fsync", full_disk)
    with pytest.raises(OSError) as caught:
        storage.write_bytes(url, b"data")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == url
    with pytest.raises(OSError, match="No space left"):
        storage.put_file(__file__, storage.join("stage", "copy.py"))
    monkeypatch.undo()
    assert os.listdir(tmp_path / "stage") == []
    # What a killed writer leaves behind is found and removed; finished files stay.
    storage.write_bytes(url, b"data")
    stale = [tmp_path / "stage" / "part-2.parquet.tmp-0badc0de", tmp_path / "stage" / "deep" / "a.mp4.tmp-1"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    assert storage.remove_temp_files(storage.join("stage")) == sorted(str(p) for p in stale)
    assert not any(p.exists() for p in stale) and storage.read_bytes(url) == b"data"
