"""`humove ingest-motion`: bad files are skipped by name, keys are unique, and the output is a dataset like the
shards stage's (same tar writer, a dataset.json that passes the project's validation, readable samples)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import webdataset as wds

from humove.dataset import TAR_MTIME
from humove.model.ingest_motion import ingest_motion
from humove.schemas.shard import list_shards, read_dataset, read_sample


def write_sequence(path: Path, frames: int = 20, rate: float = 60.0, seed: int = 0, **override) -> Path:
    """An AMASS-style SMPL-H sequence."""
    rng = np.random.default_rng(seed)
    arrays = {"poses": 0.1 * rng.normal(size=(frames, 156)), "trans": np.cumsum(0.01 * np.ones((frames, 3)), 0),
              "betas": rng.normal(size=16), "mocap_framerate": np.array(rate)}
    arrays.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def members_of(shard: str) -> list[str]:
    with tarfile.open(shard) as tar:
        return [member.name for member in tar.getmembers()]


def test_bad_files_are_skipped_by_name_and_the_rest_is_written(tmp_path):
    source = tmp_path / "amass"
    write_sequence(source / "good.npz")
    nan_on_dropped_frame = np.cumsum(0.01 * np.ones((20, 3)), 0)
    nan_on_dropped_frame[1, 0] = np.nan  # 60 → 30 fps keeps the even frames only
    write_sequence(source / "nan.npz", trans=nan_on_dropped_frame)
    (source / "garbage.npz").write_bytes(b"this is not a zip file")
    write_sequence(source / "wrong.npz", poses=np.zeros((20, 10)))

    summary = ingest_motion(source, tmp_path / "out", body_model="standin-smpl", fps=30.0, stats_frames=5)
    reasons = {s["file"]: s["reason"] for s in summary["skipped_files"]}
    assert summary["samples"] == 1 and summary["skipped"] == 3
    assert set(reasons) == {"nan.npz", "garbage.npz", "wrong.npz"}
    assert "'trans'" in reasons["nan.npz"] and "NaN" in reasons["nan.npz"] and "[1]" in reasons["nan.npz"]
    assert "poses" in reasons["wrong.npz"]
    assert str(source) not in " ".join(reasons.values())  # named relative to the input folder
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset.json", "humove-train-000000.tar", "index.parquet", "wids-train.json"]  # no .tmp, no staging
    assert read_dataset(str(out)).total_samples == 1


def test_keys_are_unique_even_when_paths_slug_alike(tmp_path):
    source = tmp_path / "amass"
    for seed, name in enumerate(["a b.npz", "a_b.npz", "sub/x.npz", "sub_x.npz", "A_B.npz"]):
        write_sequence(source / name, seed=seed)
    summary = ingest_motion(source, tmp_path / "out", body_model="standin-smpl", fps=60.0, stats_frames=5)
    assert summary["samples"] == 5
    (shard,) = list_shards(str(tmp_path / "out"))
    names = members_of(shard)
    assert len(names) == len(set(names)) == 10
    keys = sorted({name.split(".", 1)[0] for name in names})
    assert len(keys) == 5 and any(k.startswith("sub_x-") for k in keys)


def test_motion_datasets_are_reproducible_valid_and_readable(tmp_path):
    source = tmp_path / "amass"
    write_sequence(source / "walk.npz", seed=1)
    write_sequence(source / "run" / "fast.npz", seed=2, frames=30)
    outputs = []
    for out in ("first", "second"):
        ingest_motion(source, tmp_path / out, body_model="standin-smpl", fps=30.0, per_shard=1, stats_frames=5)
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / out).iterdir())})
    assert outputs[0] == outputs[1]

    manifest = read_dataset(str(tmp_path / "first"))  # the project's manifest validation
    assert manifest.feature_stats and manifest.splits["train"].samples == 2 and len(manifest.shards) == 2
    for shard in list_shards(str(tmp_path / "first")):
        with tarfile.open(shard) as tar:
            assert {(m.mtime, m.uid, m.uname, m.mode) for m in tar.getmembers()} == {(TAR_MTIME, 0, "humove", 0o444)}
        for raw in wds.WebDataset(shard, shardshuffle=False):
            sample = read_sample(raw)  # the sample reader accepts motion-only samples
            assert sample.video is None and sample.motion is not None
            assert not sample.metadata.has_video and sample.metadata.source.uri in ("walk.npz", "run/fast.npz")
            assert sample.motion.num_frames == sample.metadata.num_frames


def test_every_hostile_motion_file_is_skipped_with_its_reason_and_the_rest_is_written(tmp_path):
    """Issue 22 item 7: a bad rate shape, zero frames or a 1e30 translation used to abort the whole run (or pass)."""
    from hostile.trainer.corpus import write_bad_motion_files

    source = tmp_path / "amass"
    expected = write_bad_motion_files(source, marker=tmp_path / "code-ran")
    write_sequence(source / "good_a.npz", seed=1)
    write_sequence(source / "good_b.npz", seed=2)
    summary = ingest_motion(source, tmp_path / "out", body_model="standin-smpl", fps=30.0, stats_frames=5)
    reasons = {s["file"]: s["reason"] for s in summary["skipped_files"]}
    assert summary["samples"] == 2 and summary["skipped"] == len(expected)
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in reasons[name] and "\n" not in reasons[name], (name, reasons[name])
    assert read_dataset(str(tmp_path / "out")).total_samples == 2
    assert not (tmp_path / "code-ran").exists()


def test_the_translation_bound_is_configurable_and_the_cli_summarises(tmp_path):
    from typer.testing import CliRunner

    from humove.model.cli import model_app

    source = tmp_path / "amass"
    write_sequence(source / "near.npz", seed=1)
    write_sequence(source / "far.npz", seed=2, trans=np.full((20, 3), 50.0))  # 87 m from the origin
    summary = ingest_motion(source, tmp_path / "wide", body_model="standin-smpl", stats_frames=5)
    assert summary["samples"] == 2
    result = CliRunner().invoke(model_app, ["ingest-motion", str(source), "--out", str(tmp_path / "narrow"),
                                            "--body-model", "standin-smpl", "--stats-frames", "5",
                                            "--max-translation-m", "10"])
    assert result.exit_code == 0, result.output
    assert "1 written, 1 skipped" in result.output and "far.npz: " in result.output
    assert "beyond the 10 m bound" in result.output
