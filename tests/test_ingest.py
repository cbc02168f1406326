"""`ingest`: listing folders, files and manifests, and one clear record per input for every bad input."""

import json
import os
import shutil

import fsspec
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
from fixtures_video import (
    records_table,
    write_absurd_header,
    write_audio_only,
    write_empty,
    write_text,
    write_truncated,
    write_video,
)

from humove import ids
from humove.schemas import ingest as ingest_schema
from humove.stage import StageContext
from humove.stages.ingest import IngestConfig, IngestError, IngestStage


def make_stage(run_dir, **config) -> IngestStage:
    return IngestStage(IngestConfig(**config), StageContext(str(run_dir), "ingest"))


def run_all(stage: IngestStage) -> dict[str, dict]:
    """What the engine does for a source stage, minus Ray: list, process, decide. input_id → record."""
    out = {}
    for item in stage.list_inputs():
        record = stage.process(item)
        if record["status"] == "ok":
            rejection = stage.decide(record)
            if rejection:
                record = {**record, "status": "rejected", "reason": rejection.reason,
                          "value": rejection.value}
        out[item["input_id"]] = record
    return out


def test_folder_listing_is_recursive_sorted_and_skips_non_videos(tmp_path):
    videos = tmp_path / "videos"
    (videos / "sub dir").mkdir(parents=True)
    a = write_video(str(videos / "b.mp4"))
    b = write_video(str(videos / "sub dir" / "a clip é 日本.MOV"))
    (videos / "notes.txt").write_text("not a video")
    (videos / ".hidden.mp4").write_bytes(b"")
    items = make_stage(tmp_path / "run", source=str(videos)).list_inputs()
    assert [i["input_id"] for i in items] == sorted([a, b])
    assert all(i["source_path"] == i["input_id"] for i in items)


def test_same_path_listed_twice_collapses(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"))
    spelled_differently = str(tmp_path / "." / "sub" / ".." / "v.mp4")
    items = make_stage(tmp_path / "run", source=[path, spelled_differently, path]).list_inputs()
    assert [i["input_id"] for i in items] == [path]


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_manifest_with_relative_paths_and_annotations(tmp_path, kind):
    folder = tmp_path / "data"
    (folder / "clips").mkdir(parents=True)
    write_video(str(folder / "clips" / "one.mp4"))
    rows = [
        {"path": "clips/one.mp4", "keyword": "jumping jacks", "category": "sport", "subcategory": "fitness",
         "source": "test", "licence": "CC-BY"},
        {"path": "clips/missing.mp4", "keyword": None, "category": None, "subcategory": None, "source": None,
         "licence": None},
    ]
    manifest = folder / f"manifest.{kind}"
    if kind == "csv":
        pa.csv.write_csv(pa.Table.from_pylist(rows), str(manifest))
    elif kind == "jsonl":
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), str(manifest))

    stage = make_stage(tmp_path / "run", source=str(manifest), min_duration_s=0.5, min_side_px=16)
    items = stage.list_inputs()
    assert [i["input_id"] for i in items] == [str(folder / "clips" / "one.mp4"),
                                              str(folder / "clips" / "missing.mp4")]
    assert items[0]["keyword"] == "jumping jacks" and items[0]["licence"] == "CC-BY"
    records = run_all(stage)
    found, missing = records[items[0]["input_id"]], records[items[1]["input_id"]]
    assert found["status"] == "ok" and found["category"] == "sport"
    assert found["id"] == ids.video_id_from_file(items[0]["input_id"])
    assert missing["status"] == "rejected" and missing["reason"] == "missing_file"
    assert missing["id"] == ids.video_id_from_url(items[1]["input_id"])
    assert "missing.mp4" in missing["detail"]


def test_manifest_without_a_path_column_is_a_clear_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,keyword\na.mp4,x\n")
    with pytest.raises(IngestError, match="'path' or 'url'"):
        make_stage(tmp_path / "run", source=str(manifest)).list_inputs()


def test_every_bad_input_gets_its_own_record_and_reason(tmp_path):
    """The issue's bad-input list: each input gets exactly one record with a clear status and reason, and the
    good inputs among them are unaffected."""
    d = tmp_path / "in"
    d.mkdir()
    good = write_video(str(d / "good.mp4"), frames=60)
    copy = str(d / "copy of good.mp4")
    shutil.copyfile(good, copy)
    expected = {
        write_empty(str(d / "zero.mp4")): ("rejected", "empty"),
        write_truncated(str(d / "truncated.mp4")): ("rejected", "truncated"),
        write_text(str(d / "text.mp4")): ("rejected", "unreadable"),
        write_audio_only(str(d / "audio.mp4")): ("rejected", "no_video_stream"),
        write_video(str(d / "one frame.mp4"), frames=1): ("rejected", "too_short"),
        write_absurd_header(str(d / "absurd.y4m")): ("rejected", "absurd_dimensions"),
        write_video(str(d / "vfr.mp4"), frames=40, timestamps_ms=[i * 37 + (i % 2) * 20 for i in range(40)]):
            ("ok", None),
        write_video(str(d / "rotated.mp4"), frames=45, rotation=90): ("ok", None),
        write_video(str(d / "spaces and ünïcødé 名前.mp4"), frames=45): ("ok", None),
        good: ("ok", None),
        copy: ("ok", None),
        str(d / "does-not-exist.mp4"): ("rejected", "missing_file"),
    }
    stage = make_stage(tmp_path / "run", source=[*expected, good], min_duration_s=1.0,
                       min_side_px=16)
    records = run_all(stage)
    assert set(records) == set(expected)
    for path, (status, reason) in expected.items():
        record = records[path]
        assert (record["status"], record.get("reason")) == (status, reason), (path, record)
        if status == "rejected" and reason != "too_short":
            assert record["detail"], path  # a human-readable explanation naming what was found
    assert records[str(d / "vfr.mp4")]["variable_fps"] is True
    rotated = records[str(d / "rotated.mp4")]
    assert (rotated["rotation"], rotated["width"], rotated["height"]) == (90, 48, 64)
    # The same bytes under two names: same video id (the engine turns the later one into a duplicate).
    assert records[good]["id"] == records[copy]["id"]
    # All records fit the ingest schema, the way the engine stores them.
    table = records_table(ingest_schema.SCHEMA, list(records.values()))
    assert table.num_rows == len(expected)


def test_thresholds_are_decisions(tmp_path):
    stage = make_stage(tmp_path, min_duration_s=2.0, min_side_px=100, max_duration_s=60.0)
    base = {"duration_s": 10.0, "width": 320, "height": 240}
    assert stage.decide(base) is None
    decided = [stage.decide({**base, **change}) for change in ({"duration_s": 1.5}, {"height": 90},
                                                                {"duration_s": 61.0})]
    assert [(r.reason, r.value) for r in decided] == [("too_short", 1.5), ("too_small", 90.0), ("too_long", 61.0)]
    assert all(r.measured and r.needs for r in decided)  # the threshold beside the measured value
    config = IngestConfig(min_duration_s=2.0)
    assert "min_duration_s" in config.decision_dict() and "min_duration_s" not in config.fingerprint_dict()


def test_builtin_demo_videos_are_written_once_into_the_run_dir(tmp_path):
    stage = make_stage(tmp_path / "run", source="builtin:demo-videos")
    items = stage.list_inputs()
    folder = tmp_path / "run" / "samples"
    names = sorted(p.name for p in folder.glob("*.mp4"))
    assert [i["input_id"] for i in items] == [f"builtin:demo-videos/{name}" for name in names]
    assert [i["source_path"] for i in items] == [str(folder / name) for name in names]
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.mp4")}
    assert stage.list_inputs() == items
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.mp4")} == mtimes
    records = run_all(stage)
    statuses = {os.path.basename(k): (r["status"], r.get("reason")) for k, r in records.items()}
    assert statuses.pop("demo_07_too_short.mp4") == ("rejected", "too_short")
    assert set(statuses.values()) == {("ok", None)}
    assert all(r["backend"].startswith("pyav-") for r in records.values() if r["status"] == "ok")


def test_changing_the_source_does_not_change_the_fingerprint():
    assert IngestConfig(source="a/").fingerprint_dict() == IngestConfig(source=["b.csv"]).fingerprint_dict()


def test_object_store_folder_is_listed_and_probed(tmp_path):
    """Same code path for s3:// / gs:// sources, exercised with fsspec's in-memory filesystem."""
    memory = fsspec.filesystem("memory")
    bucket = f"/bucket-{tmp_path.name}"
    local = write_video(str(tmp_path / "v.mp4"), frames=45)
    memory.put_file(local, f"{bucket}/videos/v.mp4")
    stage = make_stage(f"memory://run-{tmp_path.name}", source=f"memory://{bucket}/videos", min_side_px=16)
    (item,) = stage.list_inputs()
    assert item["input_id"].startswith("memory://") and item["input_id"].endswith("/videos/v.mp4")
    record = stage.process(item)
    assert record["status"] == "ok" and record["id"] == ids.video_id_from_file(local)
    assert record["num_frames"] == 45


def test_a_source_that_is_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(IngestError, match="neither a folder"):
        make_stage(tmp_path / "run", source=str(tmp_path / "no-such-folder")).list_inputs()


def test_an_unreachable_url_is_rejected_with_its_reason(tmp_path):
    stage = make_stage(tmp_path / "run", source=["nosuch://host/video.mp4"])
    (item,) = stage.list_inputs()
    record = stage.process(item)
    assert (record["status"], record["reason"]) == ("rejected", "unreachable")
    assert record["id"] == ids.video_id_from_url("nosuch://host/video.mp4")
    assert "nosuch" in record["detail"]


def test_manifest_rows_may_give_a_path_or_a_url(tmp_path):
    write_video(str(tmp_path / "here.mp4"))
    (tmp_path / "m.csv").write_text("path,url,keyword\nhere.mp4,,walk\n,nosuch://host/there.mp4,run\n")
    items = make_stage(tmp_path / "run", source=str(tmp_path / "m.csv")).list_inputs()
    assert [(i["input_id"], i["keyword"]) for i in items] == [
        (str(tmp_path / "here.mp4"), "walk"), ("nosuch://host/there.mp4", "run")]


def test_demo_video_ids_do_not_depend_on_the_run_dir(tmp_path):
    """A copied or moved run dir lists the same demo inputs, so the engine does not probe them again."""
    first = make_stage(tmp_path / "run", source="builtin:demo-videos").list_inputs()
    shutil.copytree(tmp_path / "run", tmp_path / "moved")
    moved = make_stage(tmp_path / "moved", source="builtin:demo-videos").list_inputs()
    assert [i["input_id"] for i in moved] == [i["input_id"] for i in first]
    assert all(i["source_path"].startswith(str(tmp_path / "moved")) for i in moved)


def test_a_manifest_row_without_a_path_is_rejected_alone(tmp_path):
    write_video(str(tmp_path / "here.mp4"))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,url,keyword\nhere.mp4,,walk\n,,run\n")
    stage = make_stage(tmp_path / "run", source=str(manifest), min_duration_s=0.5, min_side_px=16)
    items = stage.list_inputs()
    assert [i["input_id"] for i in items] == [str(tmp_path / "here.mp4"), f"{manifest}#row2"]
    records = run_all(stage)
    assert records[str(tmp_path / "here.mp4")]["status"] == "ok"
    bad = records[f"{manifest}#row2"]
    assert (bad["status"], bad["reason"], bad["keyword"]) == ("rejected", "missing_path", "run")
    assert str(manifest) in bad["detail"] and "row 2" in bad["detail"]
    assert bad["id"] == ids.video_id_from_url(f"{manifest}#row2")
    records_table(ingest_schema.SCHEMA, list(records.values()))  # fits the schema


def test_every_listed_candidate_of_a_folder_gets_a_record(tmp_path, monkeypatch):
    """A directory named like a video, a broken link and an unreadable file are listed and rejected with a
    reason, not skipped silently; videos inside the odd directory are still found."""
    d = tmp_path / "in"
    (d / "bad_dir.mp4").mkdir(parents=True)
    good = write_video(str(d / "good.mp4"), frames=45)
    inner = write_video(str(d / "bad_dir.mp4" / "inner.mp4"), frames=45)
    (d / "broken.mp4").symlink_to(tmp_path / "gone" / "x.mp4")
    locked = write_video(str(d / "locked.mp4"), frames=45)
    real_video_id = ids.video_id_from_file

    def unreadable(path):  # tests run as root, where chmod does not stop reading: fake the permission error
        if path == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_video_id(path)

    monkeypatch.setattr(ids, "video_id_from_file", unreadable)
    stage = make_stage(tmp_path / "run", source=str(d), min_duration_s=1.0, min_side_px=16)
    records = run_all(stage)
    outcome = {os.path.relpath(k, d): (r["status"], r.get("reason")) for k, r in records.items()}
    assert outcome == {
        "bad_dir.mp4": ("rejected", "not_a_file"),
        "bad_dir.mp4/inner.mp4": ("ok", None),
        "broken.mp4": ("rejected", "broken_link"),
        "good.mp4": ("ok", None),
        "locked.mp4": ("rejected", "unreadable"),
    }
    assert "directory" in records[str(d / "bad_dir.mp4")]["detail"]
    assert "gone" in records[str(d / "broken.mp4")]["detail"]
    assert records[good]["source_uri"] == "good.mp4" and records[inner]["source_uri"] == "bad_dir.mp4/inner.mp4"
    records_table(ingest_schema.SCHEMA, list(records.values()))  # every record fits the schema


def test_source_uri_is_relative_to_the_source_root_or_the_url(tmp_path):
    """What the dataset carries: never an absolute path of the building machine."""
    folder = tmp_path / "data"
    (folder / "clips").mkdir(parents=True)
    write_video(str(folder / "clips" / "one.mp4"))
    (folder / "m.csv").write_text("path,url\nclips/one.mp4,\n,nosuch://host/two.mp4\n,\n")
    manifest_items = make_stage(tmp_path / "run", source=str(folder / "m.csv")).list_inputs()
    assert [i["source_uri"] for i in manifest_items] == ["clips/one.mp4", "nosuch://host/two.mp4", "m.csv#row3"]
    single = make_stage(tmp_path / "run", source=str(folder / "clips" / "one.mp4")).list_inputs()
    assert [i["source_uri"] for i in single] == ["one.mp4"]
    demo = make_stage(tmp_path / "run", source="builtin:demo-videos").list_inputs()
    assert all(i["source_uri"] == i["input_id"] and i["source_uri"].startswith("builtin:demo-videos/") for i in demo)
    record = make_stage(tmp_path / "run", source=str(folder), min_duration_s=0.5, min_side_px=16).process(
        make_stage(tmp_path / "run", source=str(folder)).list_inputs()[0])
    assert record["source_uri"] == "clips/one.mp4" and record["source_path"] == str(folder / "clips" / "one.mp4")
