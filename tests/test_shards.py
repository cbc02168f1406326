"""The `pack` and `shards` stages and the shard sample spec: read back with webdataset, determinism, splits, size
cuts, object-store output, stale shard removal, and validation on write and on read."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tarfile
import uuid
from pathlib import Path

import av
import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from blake3 import blake3

from humove.schemas.motion import MotionClip, load_motion, motion_to_bytes
from humove.schemas.pack import SCHEMA as PACK_SCHEMA
from humove.schemas.records import COMMON_NAMES
from humove.schemas.shard import (
    MANIFEST_FILE,
    SHARD_NAME_RE,
    ShardSampleError,
    read_index,
    read_manifest,
    read_sample,
    validate_sample,
)
from humove.schemas.shards import SCHEMA
from humove.sharding import SHARD_STATS_FILE, split_of
from humove.stage import StageContext
from humove.stages.pack import PackStage
from humove.stages.shards import ShardsStage
from humove.worker import error_record

FPS = 8


def make_mp4(path: Path, num_frames: int, seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small H.264 clip of moving synthetic frames; returns its bytes."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(num_frames):
            base = (xx * 3 + yy * 2 + index * 9 + seed * 37) % 256
            frame = np.stack([base, (base + 85) % 256, (base + 170) % 256], axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def make_motion(num_frames: int, seed: int) -> MotionClip:
    rng = np.random.default_rng(seed)
    valid = np.ones(num_frames, dtype=bool)
    valid[0] = False
    return MotionClip(
        betas=rng.normal(size=(num_frames, 10)).astype(np.float32),
        global_orient=rng.normal(size=(num_frames, 3)).astype(np.float32),
        body_pose=rng.normal(scale=0.2, size=(num_frames, 23, 3)).astype(np.float32),
        transl=(rng.normal(size=(num_frames, 3)) + [0, 0, 4]).astype(np.float32),
        joints=rng.normal(size=(num_frames, 24, 3)).astype(np.float32),
        focal=np.full(num_frames, 500.0, dtype=np.float32),
        image_size=np.array([48, 64], dtype=np.int32),
        valid=valid,
        fps=float(FPS),
        body_model="smpl-neutral",
    )


def clip_row(tmp: Path, video: int, shot: int, num_frames: int = 6, motion: bool = False,
             caption: str | None = None, mp4: Path | None = None) -> dict:
    """A joined upstream row as the engine hands it to an aggregate stage (ingest + shots + later columns)."""
    video_id = f"v{video:016x}"
    clip_id = f"{video_id}-{shot * 100:07d}-{shot * 100 + num_frames:07d}"
    if mp4 is None:
        mp4 = tmp / f"{clip_id}.mp4"
        make_mp4(mp4, num_frames, seed=video * 10 + shot)
    data = mp4.read_bytes()
    row = {
        "input_id": clip_id, "clip_id": clip_id, "video_id": video_id,
        # ingest columns
        "source_path": f"/videos/video {video} é.mp4", "source_uri": f"video {video} é.mp4",
        "keyword": "running", "category": "sport",
        "subcategory": None, "source": "test", "licence": "cc-by", "size_bytes": np.int64(1000 + video),
        "duration_s": 12.5, "fps": float(FPS), "variable_fps": False, "width": 64, "height": 48,
        "codec": "h264", "rotation": 0, "num_frames": 100, "has_audio": False,
        # shots columns
        "shot_index": shot, "window_index": 0, "start_s": shot * 100 / FPS,
        "end_s": (shot * 100 + num_frames) / FPS, "start_frame": shot * 100,
        "end_frame": shot * 100 + num_frames, "clip_path": str(mp4),
        "clip_sha256": hashlib.sha256(data).hexdigest(), "clip_bytes": len(data), "clip_fps": float(FPS),
        "clip_num_frames": np.int64(num_frames), "clip_width": 64, "clip_height": 48,
        "detector": "content(threshold=27)",
        # later stages: a declared score, an undeclared flag, and a run-specific timestamp that must not leak
        "aesthetic_mean": np.float64(4.5 + video / 10), "synthetic_score": np.float64(video / 10),
        "content_type": "photo", "person_found": True,
        "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    }
    if motion:
        path = tmp / f"{clip_id}.motion.npz"
        path.write_bytes(motion_to_bytes(make_motion(num_frames, seed=video * 10 + shot)))
        row["motion_path"] = str(path)
    if caption is not None:
        row["caption"] = caption
    return row


class Build:
    """The `pack` stage on each row (as a worker runs it: an exception becomes the clip's `error` record), then
    `shards` on the rows it kept, each joined with its sample record as the engine joins them. `run` returns the
    pack stage's records of the clips it did not keep and the shards' records."""

    def __init__(self, run_dir: Path, **config):
        own = {name: value for name, value in config.items() if name in PackStage.Config.model_fields}
        self.pack = PackStage(PackStage.Config(**own), StageContext(run_dir=str(run_dir), stage="pack"))
        self.shards = ShardsStage(ShardsStage.Config(**{k: v for k, v in config.items() if k not in own}),
                                  StageContext(run_dir=str(run_dir), stage="shards"))

    def output_url(self) -> str:
        return self.shards.output_url()

    def samples(self, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        """(the rows the pack stage kept, joined with their sample records; its records of the others)."""
        self.pack.setup()
        kept, others = [], []
        for row in rows:
            try:
                record = self.pack.process(row)
            except Exception as exc:  # noqa: BLE001 - as the engine's worker does
                record = error_record(self.pack, row["clip_id"], exc)
            if record["status"] == "ok":
                kept.append({**row, **{name: record[name] for name in PACK_SCHEMA.own_names}})
            else:
                others.append(record)
        return kept, others

    def run(self, rows: list[dict]) -> list[dict]:
        kept, others = self.samples(rows)
        return others + self.shards.run(kept)


def make_stage(run_dir: Path, **config) -> Build:
    """The `pack` and `shards` stages with `config` (each stage's own settings go to it)."""
    return Build(run_dir, **config)


def shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if SHARD_NAME_RE.match(p.name))


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    """Seven clips of three source videos; some with motion, some with a caption."""
    tmp = tmp_path_factory.mktemp("clips")
    return [
        clip_row(tmp, 1, 0, motion=True, caption="a person runs"),
        clip_row(tmp, 1, 1, motion=True),
        clip_row(tmp, 1, 2),
        clip_row(tmp, 2, 0, caption="a person jumps"),
        clip_row(tmp, 2, 1, motion=True, caption="a person walks"),
        clip_row(tmp, 3, 0, num_frames=9),
        clip_row(tmp, 3, 1, motion=True),
    ]


def test_shards_read_back_with_webdataset(tmp_path, rows):
    stage = make_stage(tmp_path, val_fraction=0.0)
    records = stage.run(rows)

    assert [r["status"] for r in records] == ["ok"] * len(rows)
    out = tmp_path / "dataset"
    shards = shard_files(out)
    assert [p.name for p in shards] == ["humove-train-000000.tar"]

    dataset = wds.WebDataset([str(p) for p in shards], shardshuffle=False).map(read_sample)
    samples = {s.key: s for s in dataset}
    by_id = {r["clip_id"]: r for r in rows}
    assert set(samples) == set(by_id)
    for key, sample in samples.items():
        row, meta = by_id[key], sample.metadata
        assert sample.video == Path(row["clip_path"]).read_bytes()
        assert (meta.video_id, meta.split, meta.num_frames, meta.fps) == (
            row["video_id"], "train", row["clip_num_frames"], FPS)
        assert (meta.width, meta.height) == (64, 48)
        assert (meta.caption, meta.has_caption) == (row.get("caption", ""), "caption" in row)
        assert meta.has_motion == ("motion_path" in row) and meta.has_video
        assert meta.scores.aesthetic_mean == pytest.approx(row["aesthetic_mean"])
        assert (meta.scores.synthetic_score, meta.scores.content_type) == (pytest.approx(row["synthetic_score"]),
                                                                           "photo")
        assert meta.source.uri == row["source_uri"] and meta.source.keyword == "running"
        assert meta.shot.source_start_frame == row["start_frame"] and meta.clip.sha256 == row["clip_sha256"]
        text = meta.to_json_bytes().decode()
        assert "/videos" not in text and "person_found" not in text and "2026-01-01" not in text
        if meta.has_motion:
            expected = load_motion(Path(row["motion_path"]).read_bytes())
            np.testing.assert_array_equal(sample.motion.joints, expected.joints)

    index = read_index(str(out / "index.parquet"))
    assert sorted(index["key"].to_pylist()) == sorted(by_id)
    assert set(index["shard"].to_pylist()) == {"humove-train-000000.tar"}
    assert index["position"].to_pylist() == list(range(len(rows)))

    manifest = read_manifest((out / MANIFEST_FILE).read_text())
    assert manifest.total_samples == len(rows)
    assert manifest.splits["train"].samples == len(rows) and manifest.splits["train"].videos == 3
    assert manifest.splits["train"].with_motion == 4
    assert manifest.shards[0].checksum() == ("blake3", blake3(shards[0].read_bytes()).hexdigest())
    # Motion statistics: mean over the valid frames of all train motion files.
    motions = [load_motion(Path(r["motion_path"]).read_bytes()) for r in rows if "motion_path" in r]
    joints = np.concatenate([m.joints[m.valid] for m in motions]).astype(np.float64)
    stats = manifest.motion_stats
    assert stats.frames == joints.shape[0] and stats.keys["joints"].shape == [24, 3]
    np.testing.assert_allclose(stats.keys["joints"].mean, joints.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats.keys["joints"].std, joints.std(axis=0), rtol=1e-6)

    assert {name for r in records for name in r} - COMMON_NAMES <= set(SCHEMA.own_names)
    assert all(r["shard_name"] == "humove-train-000000.tar" and r["sample_bytes"] > 0 for r in records)


def test_clip_bytes_are_the_files_size_whatever_the_row_records(tmp_path, rows):
    unrecorded = {name: value for name, value in rows[0].items() if name != "clip_bytes"}
    misrecorded = dict(rows[1], clip_bytes=1)
    records = make_stage(tmp_path, val_fraction=0.0).run([unrecorded, misrecorded])
    assert [r["status"] for r in records] == ["ok", "ok"]
    index = read_index(str(tmp_path / "dataset" / "index.parquet")).to_pylist()
    sizes = {row["key"]: json.loads(row["metadata"])["clip"]["bytes"] for row in index}
    assert sizes == {row["clip_id"]: Path(row["clip_path"]).stat().st_size for row in rows[:2]}


def test_rebuild_is_byte_identical(tmp_path, rows):
    first = make_stage(tmp_path / "a", val_fraction=0.4, max_samples_per_shard=3).run(rows)
    # Another run dir and reversed input order: the same records must give the same bytes.
    second = make_stage(tmp_path / "b", val_fraction=0.4, max_samples_per_shard=3).run(list(reversed(rows)))

    files_a = sorted(p.name for p in (tmp_path / "a" / "dataset").iterdir())
    files_b = sorted(p.name for p in (tmp_path / "b" / "dataset").iterdir())
    assert files_a == files_b and len(files_a) > 3
    for name in files_a:
        assert (tmp_path / "a" / "dataset" / name).read_bytes() == (tmp_path / "b" / "dataset" / name).read_bytes()
    assert sorted(first, key=lambda r: r["id"]) == sorted(second, key=lambda r: r["id"])

    with tarfile.open(shard_files(tmp_path / "a" / "dataset")[0]) as tar:
        member = tar.getmembers()[0]
    assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (946684800, 0, 0, "humove",
                                                                                   "humove")


def test_file_urls_read_as_local_paths(tmp_path, rows):
    """Local inputs are read without fsspec; `file://` URLs are local paths too and give the same dataset."""
    as_urls = [{**row, "clip_path": f"file://{row['clip_path']}",
                **({"motion_path": f"file://{row['motion_path']}"} if "motion_path" in row else {})} for row in rows]
    make_stage(tmp_path / "a", val_fraction=0.0).run(rows)
    records = make_stage(tmp_path / "b", val_fraction=0.0).run(as_urls)
    assert [r["status"] for r in records] == ["ok"] * len(rows)
    for path in (tmp_path / "a" / "dataset").iterdir():
        assert path.read_bytes() == (tmp_path / "b" / "dataset" / path.name).read_bytes()


def test_split_is_by_video_and_videos_spread_over_shards(tmp_path, rows):
    shared_mp4 = Path(rows[0]["clip_path"])
    many = [clip_row(tmp_path, video, shot, mp4=shared_mp4) for video in range(20) for shot in range(4)]
    records = make_stage(tmp_path, val_fraction=0.3, max_samples_per_shard=8).run(many)

    split_of_video: dict[str, set[str]] = {}
    shards_of_video: dict[str, set[str]] = {}
    for record in records:
        split_of_video.setdefault(record["video_id"], set()).add(record["shard_split"])
        shards_of_video.setdefault(record["video_id"], set()).add(record["shard_name"])
        assert record["shard_name"].startswith(f"humove-{record['shard_split']}-")
    assert all(len(splits) == 1 for splits in split_of_video.values())
    assert {next(iter(s)) for s in split_of_video.values()} == {"train", "val"}
    assert all(next(iter(split_of_video[v])) == split_of(v, 0.3) for v in split_of_video)
    # Ordering by a hash of the clip id: most videos have their clips in more than one shard.
    assert sum(len(s) > 1 for s in shards_of_video.values()) >= 10


def test_shards_are_cut_by_size_and_sample_count(tmp_path, rows):
    max_bytes = 30_000  # the seven samples take about 55 kB
    records = make_stage(tmp_path, val_fraction=0.0, max_shard_bytes=max_bytes).run(rows)
    shards = shard_files(tmp_path / "dataset")
    assert len(shards) >= 2
    assert [p.name for p in shards] == [f"humove-train-{i:06d}.tar" for i in range(len(shards))]
    assert all(p.stat().st_size <= max_bytes for p in shards)
    assert sum(r["status"] == "ok" for r in records) == len(rows)
    assert {r["shard_name"] for r in records} == {p.name for p in shards}

    capped = make_stage(tmp_path / "capped", val_fraction=0.0, max_samples_per_shard=2).run(rows)
    counts: dict[str, int] = {}
    for record in capped:
        counts[record["shard_name"]] = counts.get(record["shard_name"], 0) + 1
    assert sorted(counts.values()) == [1, 2, 2, 2]

    # A sample bigger than the limit still gets written, alone in its shard.
    tiny = make_stage(tmp_path / "tiny", val_fraction=0.0, max_shard_bytes=1024).run(rows[:2])
    assert len({r["shard_name"] for r in tiny}) == 2


def test_memory_output_through_fsspec(tmp_path, rows):
    output = f"memory://humove-test-{uuid.uuid4().hex[:8]}/shards"
    make_stage(tmp_path, output=output, val_fraction=0.5, max_samples_per_shard=1).run(rows)
    # The second build has fewer shards: the first build's extra shards must go, on object stores too.
    records = make_stage(tmp_path, output=output, val_fraction=0.5).run(rows)
    assert all(r["status"] == "ok" for r in records)
    assert not (tmp_path / "dataset").exists()

    fs = fsspec.filesystem("memory")
    root = output[len("memory://"):]
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    manifest = read_manifest(fs.cat_file(f"{root}/{MANIFEST_FILE}"))
    assert names == sorted([s.name for s in manifest.shards] + ["dataset.json", "index.parquet", SHARD_STATS_FILE]
                           + list(manifest.wids.values()))
    assert len(manifest.shards) == 2
    keys = set()
    for shard in manifest.shards:
        data = fs.cat_file(f"{root}/{shard.name}")
        assert blake3(data).hexdigest() == shard.blake3
        for key, sample in _samples_of_tar(data).items():
            assert validate_sample(sample).split == shard.split
            keys.add(key)
    assert keys == {r["clip_id"] for r in rows}
    assert read_index(fs.cat_file(f"{root}/index.parquet")).num_rows == len(rows)
    fs.rm(root, recursive=True)


def test_rebuild_removes_stale_shards(tmp_path, rows):
    make_stage(tmp_path, val_fraction=0.0, max_samples_per_shard=2).run(rows)
    assert len(shard_files(tmp_path / "dataset")) == 4
    (tmp_path / "dataset" / "notes.txt").write_text("a user's file stays")
    make_stage(tmp_path, val_fraction=0.0).run(rows[:3])
    assert [p.name for p in shard_files(tmp_path / "dataset")] == ["humove-train-000000.tar"]
    assert sorted(p.name for p in (tmp_path / "dataset").iterdir()) == [
        "dataset.json", "humove-train-000000.tar", "index.parquet", "notes.txt", SHARD_STATS_FILE, "wids-train.json"]
    assert pq.read_table(tmp_path / "dataset" / "index.parquet").num_rows == 3


def test_bad_clip_inputs_get_records_and_the_rest_is_written(tmp_path, rows):
    missing = dict(rows[0], clip_id="v00000000000000aa-0000000-0000006", video_id="v00000000000000aa",
                   clip_path=str(tmp_path / "gone.mp4"))
    tampered = dict(rows[1], clip_id="v00000000000000bb-0000000-0000006", video_id="v00000000000000bb",
                    clip_sha256="0" * 64)
    bad_motion_path = tmp_path / "bad.motion.npz"
    arrays = make_motion(6, seed=1).to_arrays()
    arrays["joints"] = arrays["joints"][:, :10]
    np.savez(bad_motion_path, **arrays)
    bad_motion = dict(rows[2], clip_id="v00000000000000cc-0000000-0000006", video_id="v00000000000000cc",
                      motion_path=str(bad_motion_path))
    wrong_length = dict(rows[5], clip_id="v00000000000000dd-0000000-0000009", video_id="v00000000000000dd",
                        motion_path=rows[0]["motion_path"])  # 6 motion frames for a 9-frame clip

    motion_changed = dict(rows[0], clip_id="v0000000000000abc-0000000-0000006", video_id="v0000000000000abc",
                          motion_sha256="0" * 64)  # the motion file is not the one its record names
    zero_fps = dict(rows[3], clip_id="v00000000000000ee-0000000-0000006", video_id="v00000000000000ee",
                    clip_fps=0.0)
    no_frames = dict(rows[3], clip_id="v00000000000000ff-0000000-0000006", video_id="v00000000000000ff",
                     clip_num_frames=None)

    records = {r["id"]: r for r in make_stage(tmp_path, val_fraction=0.0).run(
        rows + [missing, tampered, bad_motion, wrong_length, zero_fps, no_frames, motion_changed])}
    assert records[missing["clip_id"]]["status"] == "error"
    assert "gone.mp4" in records[missing["clip_id"]]["error_message"]
    assert records[tampered["clip_id"]]["reason"] == "clip_hash_mismatch"
    assert records[motion_changed["clip_id"]]["reason"] == "motion_hash_mismatch"
    assert records[bad_motion["clip_id"]]["reason"] == "invalid_sample"
    assert "joints" in records[bad_motion["clip_id"]]["detail"]
    assert "frames" in records[wrong_length["clip_id"]]["detail"]
    assert records[zero_fps["clip_id"]]["reason"] == "invalid_sample"
    assert "fps" in records[zero_fps["clip_id"]]["detail"]
    assert records[no_frames["clip_id"]]["reason"] == "missing_metadata"
    index = read_index(str(tmp_path / "dataset" / "index.parquet"))
    assert sorted(index["key"].to_pylist()) == sorted(r["clip_id"] for r in rows)


def test_validation_on_read_rejects_bad_samples(tmp_path, rows):
    make_stage(tmp_path, val_fraction=0.0).run(rows[:2])
    good = next(iter(_samples_of_tar(shard_files(tmp_path / "dataset")[0].read_bytes()).values()))
    assert validate_sample(good).has_motion

    def broken(**changes) -> dict:
        sample = dict(good)
        for name, value in changes.items():
            if value is None:
                sample.pop(name)
            else:
                sample[name] = value
        return sample

    meta = json.loads(good["json"])
    no_fps = json.dumps({k: v for k, v in meta.items() if k != "fps"}).encode()
    bad_cases = {
        "fps": broken(json=no_fps),
        "not an MP4": broken(mp4=b"this is text, not a video"),
        "has_motion": broken(**{"motion.npz": None}),
        "unknown members": broken(txt=b"x"),
        "missing member .json": broken(json=None),
        "differs from the member key": broken(__key__="v0000000000000001-other"),
        "motion has 9 frames": broken(**{"motion.npz": motion_to_bytes(make_motion(9, seed=3))}),
    }
    for message, sample in bad_cases.items():
        with pytest.raises(ShardSampleError, match=message):
            validate_sample(sample)

    # The same check runs when a shard is read: a hand-made tar with a bad sample fails on that sample.
    bad_tar = tmp_path / "bad" / "humove-train-000000.tar"
    bad_tar.parent.mkdir()
    with tarfile.open(bad_tar, "w") as tar:
        for ext, value in bad_cases["not an MP4"].items():
            if not ext.startswith("__"):
                info = tarfile.TarInfo(f"{good['__key__']}.{ext}")
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    with pytest.raises(ShardSampleError, match="not an MP4"):
        list(wds.WebDataset(str(bad_tar), shardshuffle=False).map(read_sample))


def test_config_is_checked():
    with pytest.raises(ValueError):
        PackStage.Config(val_fraction=1.5)
    with pytest.raises(ValueError):
        ShardsStage.Config(max_shard_bytes=0)
    with pytest.raises(ValueError, match=r"shards.val_fraction moved to the pack stage.*set pack.val_fraction"):
        ShardsStage.Config(val_fraction=0.1)


def _samples_of_tar(data: bytes) -> dict[str, dict[str, bytes]]:
    """Group a shard's members into samples the way WebDataset does (key = name up to the first dot)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
    return samples


def test_motion_statistics_fall_back_to_all_clips_without_train_motion(tmp_path, rows):
    make_stage(tmp_path, val_fraction=1.0).run(rows)
    manifest = read_manifest((tmp_path / "dataset" / MANIFEST_FILE).read_text())
    assert manifest.splits["train"].samples == 0 and manifest.splits["val"].with_motion == 4
    assert manifest.motion_stats.split == "all" and manifest.motion_stats.clips == 4


def test_a_crash_mid_rebuild_leaves_the_previous_dataset_whole(tmp_path, rows, monkeypatch):
    """Everything is staged: a crash while a shard is finished leaves the previous dataset as it was (readable,
    every shard matching its dataset.json) and no staging folder; the next build replaces it."""
    from humove import dataset as dataset_module
    from humove.schemas.shard import read_dataset

    make_stage(tmp_path, val_fraction=0.0).run(rows)
    folder = tmp_path / "dataset"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def crash(self):
        raise RuntimeError("crash while finishing a shard")

    monkeypatch.setattr(dataset_module.ShardWriter, "close", crash)
    with pytest.raises(RuntimeError, match="crash"):
        make_stage(tmp_path, val_fraction=0.0).run(rows[:3])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert read_dataset(str(folder)).total_samples == len(rows)
    monkeypatch.undo()
    make_stage(tmp_path, val_fraction=0.0).run(rows[:3])
    assert read_dataset(str(folder)).total_samples == 3


def test_a_failing_clip_gets_the_worker_error_record(tmp_path, rows):
    row = dict(rows[0], clip_path=str(tmp_path / "gone.mp4"))
    (record,) = make_stage(tmp_path, val_fraction=0.0).run([row])
    assert {"id", "status", "error_type", "error_message"} <= set(record)
    assert (record["id"], record["status"], record["error_type"]) == (row["clip_id"], "error", "FileNotFoundError")


def test_shard_writer_writes_what_tarfile_writes_and_hashes_it(tmp_path):
    """Members are written without tarfile, on a writer thread: the bytes must still be tarfile's ustar
    layout with the fixed headers, and the recorded size and BLAKE3 checksum those of the file."""
    from humove.dataset import ShardWriter, tar_member
    from humove.storage import Storage

    samples = [{"__key__": f"k{i}", "mp4": bytes(range(256)) * (3 * i + 1), "json": b"{}" * i} for i in range(5)]
    samples[1]["mp4"] = bytes(range(256)) * 4097  # over 1 MiB: handed to the writer thread without a copy
    writer = ShardWriter(Storage(str(tmp_path)), "train", max_bytes=1 << 30, max_samples=3)
    for sample in samples:
        writer.add(sample)
    writer.close()
    assert [s.samples for s in writer.shards] == [3, 2]
    for info, chunk in zip(writer.shards, (samples[:3], samples[3:]), strict=True):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            for sample in chunk:
                for ext in sorted(k for k in sample if not k.startswith("__")):
                    data = sample[ext]
                    archive.addfile(tar_member(f"{sample['__key__']}.{ext}", len(data)), io.BytesIO(data))
        data = (tmp_path / info.name).read_bytes()
        assert data == buffer.getvalue()
        assert (info.bytes, info.blake3, info.sha256) == (len(data), blake3(data).hexdigest(), None)


def test_short_writes_are_completed_in_order(tmp_path, monkeypatch):
    """The kernel may write less than asked: the writer goes on from where the last write stopped."""
    import os

    from humove.dataset import ShardWriter
    from humove.storage import Storage

    real_write = os.write
    calls = []

    def fake_short_writev(fd, buffers):
        """Fake `os.writev` that writes at most 1000 bytes of its first buffer, as a short write would."""
        calls.append(len(buffers))
        return real_write(fd, bytes(memoryview(buffers[0])[:1000]))

    monkeypatch.setattr(os, "writev", fake_short_writev)
    sample = {"__key__": "k0", "mp4": bytes(range(256)) * 4500, "json": b"{}"}
    writer = ShardWriter(Storage(str(tmp_path)), "train", max_bytes=1 << 30, max_samples=10)
    writer.add(sample)
    writer.close()
    monkeypatch.undo()
    with tarfile.open(tmp_path / writer.shards[0].name) as archive:
        assert {m.name: archive.extractfile(m).read() for m in archive} == {"k0.json": b"{}", "k0.mp4": sample["mp4"]}
    assert len(calls) > 1000


def test_a_write_error_on_the_writer_thread_reaches_the_caller(tmp_path, monkeypatch):
    import errno

    from humove import dataset as dataset_module
    from humove.dataset import ShardWriter
    from humove.storage import Storage

    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (Linux), where every write fails as on a full disk")
    # The shard file is opened on /dev/full instead: the writer thread's real writes fail with ENOSPC.
    monkeypatch.setattr(dataset_module, "open", lambda path, mode, buffering: open("/dev/full", mode,
                                                                                    buffering=buffering),
                        raising=False)
    writer = ShardWriter(Storage(str(tmp_path)), "train", max_bytes=1 << 30, max_samples=100)
    with pytest.raises(OSError, match="No space left") as raised:
        for number in range(50):
            writer.add({"__key__": f"k{number}", "mp4": b"x" * 1000})
        writer.close()
    assert raised.value.errno == errno.ENOSPC
    writer.discard()
    assert list(tmp_path.iterdir()) == []


def test_dataset_statistics_over_many_clips_come_from_the_train_clips_only(tmp_path):
    """40 clips with motion in two splits: the statistics, computed a batch of clips at a time, equal those of the
    train clips' motion files taken one by one (feature moments per clip merged, raw keys over valid frames)."""
    from humove.motion.representation import FeatureMoments, clip_moments

    mp4 = tmp_path / "shared.mp4"
    make_mp4(mp4, 6, seed=0)
    rows = [clip_row(tmp_path, video, shot, motion=True, mp4=mp4) for video in range(20) for shot in range(2)]
    stage = make_stage(tmp_path / "run", val_fraction=0.3, stats_window_s=0.25)
    records = stage.run(rows)
    assert all(r["status"] == "ok" for r in records)
    train = [load_motion(Path(r["motion_path"]).read_bytes()) for r in rows if split_of(r["video_id"], 0.3) == "train"]
    assert 16 < len(train) < len(rows)  # several statistics batches, and a val split left out

    manifest = read_manifest((tmp_path / "run" / "dataset" / MANIFEST_FILE).read_text())
    expected = FeatureMoments.merge_all(clip_moments(clip, 0.25) for clip in train)
    stored = manifest.feature_stats["moments"]
    assert stored["count"] == expected.count == sum(int(clip.valid.sum()) for clip in train)
    np.testing.assert_allclose(stored["mean"], expected.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stored["m2"], expected.m2, rtol=1e-9, atol=1e-9)
    stats = manifest.motion_stats
    assert (stats.split, stats.clips, stats.frames) == ("train", len(train), expected.count)
    body_pose = np.concatenate([clip.body_pose[clip.valid] for clip in train]).astype(np.float64)
    np.testing.assert_allclose(stats.keys["body_pose"].mean, body_pose.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats.keys["body_pose"].std, body_pose.std(axis=0), rtol=1e-6)


# The two spans: the shot in the source and the (trimmed) clip in the mp4 ---------------------------------------

SOURCE_FPS = 24
CODE_BITS = 7  # the source frame number, drawn as black/white blocks in every frame's top-left corner


def _draw_code(image: np.ndarray, number: int) -> None:
    for bit in range(CODE_BITS):
        image[4:16, 4 + 12 * bit:16 + 12 * bit] = 255 if (number >> bit) & 1 else 0


def _read_code(image: np.ndarray) -> int:
    return sum(1 << bit for bit in range(CODE_BITS) if image[6:14, 6 + 12 * bit:14 + 12 * bit].mean() > 128)


def _codes(mp4: bytes) -> list[int]:
    """The source frame number each frame of an MP4 shows."""
    with av.open(io.BytesIO(mp4)) as container:
        return [_read_code(frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]


def _two_shot_source(path: Path) -> None:
    """80 frames at 24 fps: shot A (frames 0–19, dark, too short to keep), then shot B (20–79) where a person
    walks in view for source frames 36–67 only; every frame carries its number."""
    import cv2

    from humove.motion.synthetic import draw_cartoon_person
    from humove.video import write_mp4

    figure = cv2.resize(draw_cartoon_person(), (135, 180), interpolation=cv2.INTER_AREA)
    frames = []
    for number in range(80):
        image = np.full((240, 320, 3), (20, 20, 60) if number < 20 else (200, 210, 220), np.uint8)
        if 36 <= number < 68:
            image[40:220, 40 + number - 36:175 + number - 36] = figure
        _draw_code(image, number)
        frames.append(image)
    write_mp4(str(path), frames, fps=SOURCE_FPS)


@pytest.fixture(scope="module")
def trimmed_run(tmp_path_factory):
    """ingest → shots (resampled to 16 fps) → person (offline; trims shot B to the person's span) → sample → shards."""
    from humove.config import load_pipeline
    from humove.engine import Runner
    from humove.ledger import Ledger

    tmp = tmp_path_factory.mktemp("spans")
    (tmp / "videos").mkdir()
    _two_shot_source(tmp / "videos" / "walk.mp4")
    pipeline = tmp / "spans.yaml"
    # The person stepping into view must not count as a cut: a high content threshold (A → B scores ≈ 100).
    pipeline.write_text(json.dumps({"name": "spans", "run": {"max_attempts": 1}, "stages": [
        {"stage": "ingest", "config": {"source": str(tmp / "videos")}},
        {"stage": "shots", "config": {"threshold": 60, "fps": 16, "max_side_px": 320}},
        {"stage": "person", "config": {"backend": "mediapipe", "tracker": "iou", "detect_every": 2,
                                       "min_span_s": 0.5}},
        {"stage": "pack", "config": {"val_fraction": 0.0}},
        {"stage": "shards"},
    ]}))
    config, stages = load_pipeline(pipeline, [])
    Runner(config, stages, str(tmp / "run"), executor="local").run()
    tables = Ledger(str(tmp / "run")).current()
    return tmp / "run", {stage: {r["id"]: r for r in tables[stage].to_pylist()} for stage in ("shots", "person")}


def test_the_sample_names_the_shot_in_the_source_and_the_trimmed_clip_in_the_mp4(trimmed_run):
    """The sample JSON's clip span is the mp4's frames (decoded, and matched to the source frames by the number
    each frame shows); its shot span is the shot the shots stage cut. Before schema 3 `clip.start_frame` was the
    shot's first frame while the mp4 started later."""
    from humove.schemas.shard import list_shards

    run_dir, records = trimmed_run
    (shot_record,) = [r for r in records["shots"].values() if r["status"] == "ok"]
    person = records["person"][shot_record["id"]]
    assert person["status"] == "ok" and person["person_clip_path"], person  # the shot was trimmed
    (sample,) = list(wds.WebDataset(list_shards(str(run_dir / "dataset")), shardshuffle=False).map(read_sample))
    meta, shot, clip = sample.metadata, sample.metadata.shot, sample.metadata.clip
    assert meta.schema_version == 3

    # The shot: what the shots stage cut and wrote, in source frames and seconds.
    shot_codes = _codes(Path(shot_record["clip_path"]).read_bytes())
    assert (shot.source_start_frame, shot.source_end_frame) == (22, 80) == (shot_record["start_frame"],
                                                                             shot_record["end_frame"])
    assert shot_codes[0] == shot.source_start_frame and shot_codes[-1] < shot.source_end_frame
    assert shot.num_frames == len(shot_codes) == shot_record["clip_num_frames"]
    assert shot.source_start_s == pytest.approx(22 / SOURCE_FPS)
    assert shot.source_end_s == pytest.approx(80 / SOURCE_FPS)

    # The clip: exactly what the mp4 holds.
    codes = _codes(sample.video)
    assert meta.num_frames == len(codes) == clip.shot_end_frame - clip.shot_start_frame and meta.fps == 16.0
    assert 0 < clip.shot_start_frame and clip.shot_end_frame < shot.num_frames  # trimmed on both sides
    assert codes == [shot_codes[i] for i in range(clip.shot_start_frame, clip.shot_end_frame)]
    assert codes[0] == clip.source_start_frame > shot.source_start_frame  # the frame the mp4 starts with
    assert 36 <= codes[0] and codes[-1] < 68  # only frames where the person is in view
    # The end: source frames before the clip's end time; the last one shown is within a source-to-clip step.
    assert codes[-1] < clip.source_end_frame <= codes[-1] + 2 and clip.source_end_frame < shot.source_end_frame
    eps, first, end = 1e-9, clip.source_start_frame, clip.source_end_frame
    assert first / SOURCE_FPS - eps <= clip.source_start_s < (first + 1) / SOURCE_FPS
    assert clip.source_end_s == pytest.approx(clip.source_start_s + meta.num_frames / meta.fps)
    assert (end - 1) / SOURCE_FPS < clip.source_end_s <= end / SOURCE_FPS + eps


def test_source_frames_of_a_trimmed_clip_are_unknown_for_variable_rate_sources():
    """The clip's source frames come from the source's constant rate; a variable-rate source recorded no frame
    times, so an edge inside the shot is null (its seconds stay exact), an edge at the shot's edge exact."""
    from humove.clips import current_clip

    row = {"clip_id": "c", "clip_path": "shot.mp4", "clip_num_frames": 40, "clip_fps": 16.0, "clip_width": 64,
           "clip_height": 48, "start_s": 1.0, "end_s": 3.5, "start_frame": 30, "end_frame": 90, "fps": 24.0,
           "variable_fps": False, "person_clip_path": "span.mp4", "person_span_start_frame": 8,
           "person_span_end_frame": 40, "person_clip_num_frames": 32}
    clip = current_clip(row)
    assert (clip.source_start_frame, clip.source_end_frame) == (30 + 12, 90)  # 8 frames at 16 fps = 12 at 24
    assert (clip.start_s, clip.end_s) == (1.5, 3.5) and clip.shot_num_frames == 40
    variable = current_clip({**row, "variable_fps": True})
    assert (variable.source_start_frame, variable.source_end_frame) == (None, 90)
    assert (variable.start_s, variable.end_s) == (1.5, 3.5)
    ends_inside = current_clip({**row, "person_span_start_frame": 0, "person_span_end_frame": 27,
                                "variable_fps": True})
    assert (ends_inside.source_start_frame, ends_inside.source_end_frame) == (30, None)
    assert current_clip({**row, "person_span_end_frame": 27}).source_end_frame == 30 + 41  # ceil(27 × 1.5)

    # The sample spec takes an unknown edge, and refuses a clip outside its shot.
    from humove.schemas.shard import filled_metadata

    def metadata(**clip):
        return filled_metadata(key="k", clip_id="k", video_id="v", split="train", fps=16.0, num_frames=32,
                               duration_s=2.0, has_motion=True, shot={"source_start_frame": 30,
                                                                      "source_end_frame": 90}, clip=clip)
    assert metadata(source_start_frame=None, source_end_frame=90).clip.source_start_frame is None
    with pytest.raises(ShardSampleError, match="not inside the shot"):
        metadata(source_start_frame=20, source_end_frame=None)
    with pytest.raises(ShardSampleError, match="end 40 before start 50"):
        metadata(source_start_frame=50, source_end_frame=40)


# A sample written by schema 2 (the shards stage before 2026-12, on the trimmed clip of the run above): its
# clip.start_frame / end_frame (26, 96) were the shot's, its start_s / end_s the trimmed clip's.
V2_METADATA = (
    '{"caption":"","captioning":{"action":"","appearance":"","background":"","model":"","output_tokens":null,'
    '"prompt_hash":"","prompt_tokens":null},"clip":{"bytes":8234,"detector":"content(threshold=60.0,'
    'min_scene_len=15)","end_frame":96,"end_s":3.520833333333333,"sha256":"2b46f71a070bf4d98720bbcc24886fe0795615d1'
    'e5791fdd9e01230013a3211f","shot_index":1,"span_end_frame":39,"span_start_frame":16,"start_frame":26,'
    '"start_s":2.083333333333333,"window_index":0},"clip_id":"vcd5b82bc708babbb-0000026-0000096","duration_s":1.4375,'
    '"fps":16.0,"has_caption":false,"has_motion":false,"has_video":true,"height":240,'
    '"key":"vcd5b82bc708babbb-0000026-0000096","motion":{"agreement_pck":null,"body_model":"","jitter_mps2":null,'
    '"reprojection_rel":null,"smpl_model":"","valid_fraction":null},"num_frames":23,"person":{"box_height":'
    '0.644234836101532,"model":"builtin:mediapipe/modules/pose_landmark/pose_landmark_full.tflite",'
    '"second_ratio":0.0},"pose":{"full_body_fraction":null,"model":"","visible_mean":null},"schema_version":2,'
    '"scores":{"aesthetic_mean":null,"aesthetic_scale":""},"source":{"category":"","codec":"h264","duration_s":4.0,'
    '"fps":24.0,"has_audio":false,"height":240,"keyword":"","licence":"","num_frames":96,"origin":"","rotation":0,'
    '"size_bytes":12340,"subcategory":"","uri":"walk.mp4","variable_fps":false,"width":320},"split":"train",'
    '"video_id":"vcd5b82bc708babbb","width":320}'
)


def test_schema_2_samples_are_read_with_their_spans_mapped_and_the_unrecorded_ones_null(tmp_path):
    from humove.schemas.shard import INDEX_SCHEMA, SAMPLE_FIELDS_V2, parse_metadata, sample_fields

    meta = parse_metadata(V2_METADATA.encode())
    assert meta.schema_version == 2  # read into the current layout, its version kept
    shot, clip = meta.shot, meta.clip
    assert (shot.index, shot.window_index, shot.source_start_frame, shot.source_end_frame) == (1, 0, 26, 96)
    assert shot.detector == "content(threshold=60.0,min_scene_len=15)"
    assert (clip.source_start_s, clip.source_end_s) == (2.083333333333333, 3.520833333333333)
    assert (clip.shot_start_frame, clip.shot_end_frame) == (16, 39) and clip.bytes == 8234
    # Never recorded by v2, so unknown here rather than guessed.
    assert (clip.source_start_frame, clip.source_end_frame) == (None, None)
    assert (shot.source_start_s, shot.source_end_s, shot.num_frames) == (None, None, None)
    assert (meta.scores.synthetic_score, meta.scores.content_type) == (None, "")
    assert parse_metadata(meta.to_json_bytes()) == meta  # the upgraded form reads back as it is
    assert parse_metadata(json.loads(V2_METADATA)) == meta  # as datasets / wids hand it: a parsed object

    # A whole v2 sample reads through read_sample, as the trainer's reader does.
    mp4 = make_mp4(tmp_path / "clip.mp4", 23, seed=0)
    key = meta.key
    assert read_sample({"__key__": key, "json": V2_METADATA.encode(), "mp4": mp4}).metadata == meta
    broken = json.loads(V2_METADATA)
    del broken["clip"]["span_start_frame"]
    with pytest.raises(ShardSampleError, match=r"\(schema 2\).*span_start_frame"):
        parse_metadata(json.dumps(broken).encode())
    with pytest.raises(ShardSampleError, match="schema_version 9"):
        parse_metadata(json.dumps({**json.loads(V2_METADATA), "schema_version": 9}).encode())

    # The v2 field table is exactly what v2 wrote; a v2 index and dataset.json read too.
    def leaves(tree, prefix=""):
        return [name for key, value in tree.items()
                for name in (leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"])]
    assert sorted(leaves(json.loads(V2_METADATA))) == sorted(f.name for f in SAMPLE_FIELDS_V2) == sorted(
        f.name for f in sample_fields(2))
    from humove.schemas.shard import index_to_bytes

    v2_index = pq.read_table(io.BytesIO(index_to_bytes([])))
    v2_index = v2_index.replace_schema_metadata({b"humove.shard_schema_version": b"2"})
    buffer = io.BytesIO()
    pq.write_table(v2_index, buffer)
    assert read_index(buffer.getvalue()).schema.names == INDEX_SCHEMA.names
    assert read_manifest(json.dumps({"schema_version": 2, "total_samples": 0, "splits": {}, "shards": []}))
