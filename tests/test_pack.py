"""The `pack` stage builds each clip's sample in a worker (its tar members and motion sums); `shards`, in the driver,
only lays the samples end to end: it publishes without reading a clip or motion file, a damaged sample is an error
naming it, `pack` streams with the clip stages before it, and a re-run after `shards` deleted the fragments of
closed shards packs nothing again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_shards import clip_row, make_stage, shard_files

from humove.config import load_pipeline
from humove.dataset import fragment_members
from humove.engine import Runner, stage_fingerprints
from humove.schemas.shard import ShardSampleError, read_dataset

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def _clips(folder: Path) -> list[dict]:
    folder.mkdir()
    return [clip_row(folder, video, shot, motion=shot == 0, caption=f"clip {video}-{shot}")
            for video in (1, 2, 3) for shot in (0, 1)]


def test_shards_publish_the_samples_without_reading_a_clip_or_a_motion_file(tmp_path):
    rows = _clips(tmp_path / "clips")
    build = make_stage(tmp_path / "run", val_fraction=0.0, max_samples_per_shard=4)
    kept, others = build.samples(rows)
    assert len(kept) == len(rows) and not others
    fragments = [Path(row["sample_path"]).read_bytes() for row in kept]
    assert all(row["sample_path"].startswith(str(tmp_path / "run" / "artifacts" / "pack")) for row in kept)
    for row in rows:  # what the workers read is gone: the driver must not need it
        os.remove(row["clip_path"])
        if "motion_path" in row:
            os.remove(row["motion_path"])

    records = build.shards.run(kept)
    assert [r["status"] for r in records] == ["ok"] * len(rows)
    folder = tmp_path / "run" / "dataset"
    manifest = read_dataset(str(folder), verify=True)
    assert manifest.total_samples == len(rows) and manifest.motion_stats.clips == 3
    shards = b"".join(path.read_bytes() for path in shard_files(folder))
    assert all(fragment in shards for fragment in fragments)  # each sample's bytes as the worker wrote them

    # The same rows built with their clips in place (another run dir): the same bytes.
    again = _clips(tmp_path / "clips-again")
    make_stage(tmp_path / "other", val_fraction=0.0, max_samples_per_shard=4).run(again)
    other = tmp_path / "other" / "dataset"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {p.name: p.read_bytes() for p in other.iterdir()}


def test_a_damaged_sample_is_an_error_naming_it_and_the_others_are_published(tmp_path):
    rows = _clips(tmp_path / "clips")
    build = make_stage(tmp_path / "run", val_fraction=0.0)
    kept, _ = build.samples(rows)
    damaged, foreign = kept[0], kept[1]
    Path(damaged["sample_path"]).write_bytes(Path(damaged["sample_path"]).read_bytes()[:-512])
    Path(foreign["sample_path"]).write_bytes(Path(kept[2]["sample_path"]).read_bytes())  # another clip's sample
    foreign["sample_fragment_bytes"] = kept[2]["sample_fragment_bytes"]

    records = {r["id"]: r for r in build.shards.run(kept)}
    for row, words in ((damaged, "its sample record says"), (foreign, "are not the sample")):
        record = records[row["clip_id"]]
        assert record["status"] == "error" and record["error_type"] == "ShardSampleError", record
        assert row["sample_path"] in record["error_message"] and words in record["error_message"]
    assert read_dataset(str(tmp_path / "run" / "dataset"), verify=True).total_samples == len(rows) - 2

    with pytest.raises(ShardSampleError, match="no tar member header at byte 0"):
        fragment_members(b"\x01" * 512, "x.tar")
    with pytest.raises(ShardSampleError, match="not a whole file member"):
        fragment_members(Path(kept[3]["sample_path"]).read_bytes()[:1024], "x.tar")


def test_pack_streams_with_the_clip_stages_and_only_it_and_shards_follow_a_caption_change(tmp_path):
    config, stages = load_pipeline(PIPELINES / "demo.yaml")
    names = [stage.name for stage in stages]
    runner = Runner(config, stages, str(tmp_path / "run"), executor="ray")
    segment = [stage.name for stage in runner._segment(names.index("shots"), len(names) - 1)]
    assert segment == names[names.index("shots"):names.index("shards")] and segment[-1] == "pack"

    _, recaptioned = load_pipeline(PIPELINES / "demo.yaml", ["caption.max_tokens=100"])
    before, after = stage_fingerprints(stages), stage_fingerprints(recaptioned)
    assert [s.name for s in stages if before[s.name]["fingerprint"] != after[s.name]["fingerprint"]] == [
        "caption", "pack", "shards"]
    assert set(before["shards"]["reads"]) == {"pack"}, "the driver reads only the samples"


def test_a_rerun_after_the_fragments_were_deleted_packs_nothing_and_rewrites_nothing(tmp_path):
    """The engine counts a clip packed by its record: the fragments that `shards` deleted once their samples were
    in closed shards are not made again, and a forced `shards` finds every sample already published."""
    import yaml
    from test_run_state import run_pipeline, small_videos

    pipeline = tmp_path / "clips.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "clips", "run": {"executor": "local"}, "stages": [
        {"stage": "ingest", "config": {"source": str(small_videos(tmp_path / "videos")), "min_duration_s": 1.0,
                                       "min_side_px": 32}},
        {"stage": "shots", "config": {"min_clip_s": 1.0, "max_clip_s": 2.0, "fps": 8, "max_side_px": 96}},
        {"stage": "pack", "config": {"val_fraction": 0.0}},
        {"stage": "shards", "config": {"max_samples_per_shard": 1}}]}))  # every shard closed
    run_dir, folder = tmp_path / "run", tmp_path / "run" / "dataset"
    run_pipeline(pipeline, run_dir)
    published = {p.name: (p.stat().st_ino, p.read_bytes()) for p in folder.iterdir()}
    clips = read_dataset(str(folder), verify=True).total_samples
    assert clips >= 2 and not list((run_dir / "artifacts" / "pack").glob("*.tar"))

    for force in ([], ["shards"]):
        results = {r.stage: r for r in run_pipeline(pipeline, run_dir, force=force)}
        assert (results["pack"].processed, results["pack"].skipped) == (0, clips)
        assert results["shards"].processed == (clips if force else 0)
        assert {p.name: (p.stat().st_ino, p.read_bytes()) for p in folder.iterdir()} == published
