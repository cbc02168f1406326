"""`humove status` table and `humove report` (HTML from templates, charts, clip previews), on run dirs written
through the real ledger. Previews are rendered at tiny sizes here."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image
from rich.console import Console

from humove.ledger import Ledger
from humove.report import ReportOptions, charts, data, status_table, write_report
from humove.report.previews import (
    MAIN_BOX_COLOUR,
    OTHER_BOX_COLOUR,
    POINT_COLOUR,
    SMPL_COLOUR,
    MediaFolder,
    Overlays,
)
from humove.schemas import caption, ingest, shards, shots, smooth
from humove.schemas.motion import MotionClip, load_motion, motion_to_bytes
from humove.schemas.records import RecordSchema
from humove.stage import MapStage

STAGES = {"ingest": (ingest.SCHEMA, "humove.stages.ingest:IngestStage"),
          "shots": (shots.SCHEMA, "humove.stages.shots:ShotsStage"),
          "shards": (shards.SCHEMA, "humove.stages.shards:ShardsStage")}
TINY = ReportOptions(preview_width=64, preview_frames=4)
HOSTILE = "<script>alert('x')</script>"


def make_mp4(path: Path, num_frames: int = 8, seed: int = 0) -> str:
    """A 64x48 H.264 clip; frame i is a flat grey of value 20 + 25*i, so the middle frame is recognisable."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(num_frames):
            frame = np.full((48, 64, 3), 20 + 25 * index + seed, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return str(path)


def record(schema: RecordSchema, record_id: str, status: str = "ok", input_id: str | None = None,
           **fields) -> dict:
    return {"id": record_id, "input_id": input_id or record_id, "status": status, "attempt": 1,
            "stage_version": "1", "schema_version": schema.version,
            "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), **fields}


def media_links(text: str) -> list[str]:
    """Every src of the page."""
    return re.findall(r'src="([^"]+)"', text)


def cards(text: str) -> dict[str, dict]:
    """clip id → {"outcome", "note", "meta", "video", "timeline", "html"} for every clip card."""
    found = {}
    for outcome, body in re.findall(r'<article class="card (\w+)">(.*?)</article>', text, re.S):
        def first(pattern, body=body):
            match = re.search(pattern, body, re.S)
            return match.group(1) if match else None
        found[first(r"<code>(.*?)</code>")] = {
            "outcome": outcome, "note": first(r'<p class="note">(.*?)</p>'),
            "meta": first(r'<p class="meta">(.*?)</p>'),
            "video": first(r'<video src="([^"]+)"'), "timeline": first(r'<img class="timeline" src="([^"]+)"'),
            "problem": first(r'<p class="problem">(.*?)</p>'), "html": body}
    return found


def video_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def section(text: str, anchor: str) -> str:
    return text.split(f'<section id="{anchor}">')[1].split("</section>")[0]


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    """A run of 6 videos: one rejected too short, one error; 4 clips of which one is rejected by shards."""
    ledger = Ledger(str(tmp_path))
    ledger.write_run_info({"pipeline": "test", "max_attempts": 3,
                           "stages": [{"name": name, "class": ref} for name, (_, ref) in STAGES.items()]})
    ledger.write_stage_state("ingest", {"config": {"min_duration_s": 1.0, "min_side_px": 64,
                                                   "max_duration_s": None}})
    video_ids = [f"v{i:016x}" for i in range(6)]
    ingest_rows = [record(ingest.SCHEMA, v, duration_s=5.0 + i, fps=[25.0, 30.0][i % 2], width=64, height=48)
                   for i, v in enumerate(video_ids[:4])]
    ingest_rows.append(record(ingest.SCHEMA, video_ids[4], "rejected", reason="too_short", value=0.4,
                              detail="too_short: 0.40 s long (needs ≥ 1 s)", duration_s=0.4))
    ingest_rows.append(record(ingest.SCHEMA, video_ids[5], "error", error_type="InvalidDataError",
                              error_message="moov atom not found in broken.mp4"))
    ledger.append("ingest", ingest.SCHEMA.to_table(ingest_rows))

    clips = []
    for i, video_id in enumerate(video_ids[:4]):
        clip_id = f"{video_id}-0000000-0000008"
        path = make_mp4(tmp_path / f"{clip_id}.mp4", seed=i)
        clips.append(record(shots.SCHEMA, clip_id, input_id=video_id, video_id=video_id, start_s=0.5 * i,
                            end_s=0.5 * i + 1.0 + 0.25 * i, clip_path=path, clip_fps=8.0, clip_num_frames=8))
    ledger.append("shots", shots.SCHEMA.to_table(clips))

    shard_rows = [record(shards.SCHEMA, c["id"], video_id=c["video_id"], shard_name="humove-train-000000.tar",
                         shard_split="train", sample_bytes=1000) for c in clips[:3]]
    shard_rows.append(record(shards.SCHEMA, clips[3]["id"], "rejected", reason="clip_hash_mismatch",
                             detail=f"clip changed after it was recorded {HOSTILE}", video_id=clips[3]["video_id"]))
    ledger.append("shards", shards.SCHEMA.to_table(shard_rows))
    return tmp_path


def test_status_table_lists_counts_and_reasons(run_dir):
    summary = Ledger(str(run_dir)).summary()
    console = Console(record=True, width=200)
    console.print(status_table(summary))
    text = console.export_text()
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 2}
    assert set(lines) >= {"ingest", "shots", "shards"}
    assert re.search(r"ingest\s*│\s*4\s*│\s*1\s*│\s*1\s*│\s*0\s*│\s*0\s*│\s*6\s*│\s*too_short 1", lines["ingest"])
    assert "clip_hash_mismatch 1" in lines["shards"]


def test_report_names_stages_reasons_and_units_and_loads_only_its_own_files(run_dir):
    out = run_dir / "report.html"
    assert write_report(Ledger(str(run_dir)), str(out), TINY) == str(out)
    text = out.read_text()

    assert not re.search(r"https?:|//", text)  # no web address
    assert "default-src 'none'" in text  # the page runs no script and loads nothing from elsewhere
    for link in media_links(text):  # charts and previews: files of the media folder beside the page
        assert re.fullmatch(r"report/[0-9a-f]{24}\.(mp4|png)", link) and (run_dir / link).is_file()
    for name in ("ingest", "shots", "shards", "too_short", "clip_hash_mismatch", "InvalidDataError",
                 "moov atom not found", "0.40 s long (needs ≥ 1 s)"):
        assert name in text
    # The funnel says what each stage counts and where the unit changes.
    funnel = section(text, "funnel")
    assert "<td>ingest</td><td>videos</td>" in funnel and "<td>shots</td><td>clips</td>" in funnel
    assert "From <b>shots</b> on, a record is a clip, not a video" in " ".join(funnel.split())
    # Histograms of the float measures that vary, with the threshold of the stage's stored config.
    assert 'alt="ingest histogram of duration_s, threshold min_duration_s: keeps ≥ 1"' in text
    assert 'alt="shots histogram of clip length"' in text
    # Kept clips: the clips kept by the last stage (3 of 4), each with a playable preview.
    kept = {clip_id: card for clip_id, card in cards(text).items() if card["outcome"] == "kept"}
    assert sorted(kept) == [f"v{i:016x}-0000000-0000008" for i in range(3)]
    frames = video_frames(run_dir / kept["v0000000000000000-0000000-0000008"]["video"])
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3)  # 8 frames sampled to 4, 64 px wide: no motion
    assert abs(frames[2].mean() - (20 + 25 * 4)) < 12  # the 3rd of every 2nd frame is frame 4: grey 120
    assert "8 frames at 8 fps" in kept["v0000000000000000-0000000-0000008"]["meta"]


def test_untrusted_text_is_escaped(run_dir, tmp_path):
    """A reason detail and a caption holding markup come out as text: the page holds no script element."""
    ledger = Ledger(str(run_dir))
    info = ledger.run_info()
    info["stages"].append({"name": "caption", "class": "humove.stages.caption:CaptionStage"})
    ledger.write_run_info(info)
    clip_ids = [f"v{i:016x}-0000000-0000008" for i in range(3)]
    ledger.append("caption", caption.SCHEMA.to_table([
        record(caption.SCHEMA, clip_id, caption=f"A person waves. {HOSTILE}", caption_appearance="red shirt",
               caption_background="a wall", caption_action=HOSTILE, caption_is_template=True, caption_words=4,
               caption_model="template", backend="template") for clip_id in clip_ids]))
    out = run_dir / "report.html"
    write_report(Ledger(str(run_dir)), str(out), TINY)
    text = out.read_text()
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in text
    # One card per clip, its caption on it: no second card of the same clip.
    found = cards(text)
    assert all(clip_id in found for clip_id in clip_ids) and len(found) == len(set(found))
    assert text.count("A person waves.") == len(clip_ids)
    assert all("A person waves." in found[clip_id]["html"] for clip_id in clip_ids)


def test_report_shows_the_dataset_counts(run_dir):
    from humove.schemas.shard import DatasetManifest, ShardInfo, SplitCounts

    manifest = DatasetManifest(
        total_samples=3, splits={"train": SplitCounts(samples=3, videos=3, shards=1, bytes=30720),
                                 "val": SplitCounts()},
        shards=[ShardInfo(name="humove-train-000000.tar", split="train", samples=3, bytes=30720, blake3="0" * 64)],
    )
    (run_dir / "dataset").mkdir(exist_ok=True)
    (run_dir / "dataset" / "dataset.json").write_text(manifest.to_json_text())
    write_report(Ledger(str(run_dir)), str(run_dir / "report.html"), TINY)
    dataset = section((run_dir / "report.html").read_text(), "dataset")
    assert "3 samples in 1 shards" in dataset
    assert "<td>train</td><td>3</td><td>3</td><td>1</td>" in dataset


def test_report_of_an_empty_run(tmp_path):
    ledger = Ledger(str(tmp_path))
    ledger.write_run_info({"pipeline": "test", "stages": [{"name": n, "class": r} for n, (_, r) in STAGES.items()]})
    out = tmp_path / "report.html"
    write_report(ledger, str(out))
    text = out.read_text()
    assert "No kept clips yet" in text and "No errors." in text and "No dataset written yet" in text


# Charts ------------------------------------------------------------------------------------------------------------

def assert_readable(figure, count_axes: list[str]) -> None:
    """Tick labels of every axis do not overlap; the named count axes ("x"/"y" of the first axes) tick whole
    numbers only."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = figure.axes[0]
    for name in ("x", "y"):
        axis = getattr(axes, f"{name}axis")
        low, high = sorted(axis.get_view_interval())
        shown = [tick for tick in axis.get_major_ticks()
                 if low <= tick.get_loc() <= high and tick.label1.get_visible() and tick.label1.get_text()]
        boxes = [tick.label1.get_window_extent(renderer) for tick in shown]
        for a, b in zip(boxes, boxes[1:], strict=False):
            assert not a.overlaps(b), f"{name} tick labels overlap: {[t.label1.get_text() for t in shown]}"
        if name in count_axes:
            assert shown and all(float(tick.get_loc()).is_integer() for tick in shown), [t.get_loc() for t in shown]


def test_histograms_have_whole_counts_thresholds_units_and_readable_ticks():
    measure = data.Measure.of_values("person_size", "person_size", data.unit_of("person_size"),
                                     kept=[0.5, 0.61, 0.7, 0.92], rejected=[0.12, 0.15],
                                     thresholds=[data.Threshold("min_person_size", 0.2)])
    figure = charts.histogram(measure, "clips")
    axes = figure.axes[0]
    assert axes.get_title() == "person_size (× picture height)" and axes.get_ylabel() == "clips"
    lines = [line for line in axes.get_lines() if list(line.get_xdata()) == [0.2, 0.2]]
    assert len(lines) == 1 and lines[0].get_label() == "min_person_size: keeps ≥ 0.2"
    assert_readable(figure, count_axes=["y"])
    # A threshold far from every value is still on the axis; large frame counts keep few, whole ticks.
    far = data.Measure.of_values("motion_jitter_mps2", "motion_jitter_mps2", "m/s²", kept=[1.5, 2.0, 2.5, 3.1],
                                 rejected=[], thresholds=[data.Threshold("max_jitter_mps2", 60.0)])
    axes = charts.histogram(far, "clips").axes[0]
    assert axes.get_xlim()[1] > 60.0
    frames = data.Measure.of_values("clip_num_frames", "clip_num_frames", "frames", kept=list(range(40, 1000, 7)),
                                    rejected=[1000, 1001], integer=True)
    assert_readable(charts.histogram(frames, "clips"), count_axes=["x", "y"])


def test_funnel_reasons_and_timeline_charts_are_readable():
    stages = [{"stage": stage, "unit": unit, "ok": ok, "rejected": rejected, "error": 1, "quarantined": 0,
               "pending": 0, "total": ok + rejected + 1}
              for stage, unit, ok, rejected in (("download", "videos", 9, 9), ("ingest", "videos", 8, 1),
                                                ("shots", "clips", 11, 0), ("person", "clips", 8, 3))]
    figure = charts.funnel(stages)
    top_down = sorted(zip(figure.axes[0].get_yticks(), figure.axes[0].get_yticklabels(), strict=True), reverse=True,
                      key=lambda tick: tick[0])
    assert [label.get_text() for _, label in top_down] == [
        "download (videos)", "ingest (videos)", "shots (clips)", "person (clips)"]
    assert any(text.get_text() == "videos → clips" for text in figure.axes[0].texts)
    assert_readable(figure, count_axes=["x"])
    assert_readable(charts.reasons("person", [("occluded", 2), ("no_person", 1)], "clips"), count_axes=["x"])
    valid = np.array([False, True, True, True, True, False, True, True])
    acceleration = np.array([np.nan, np.nan, 3.0, 4.0, np.nan, np.nan, np.nan, np.nan])
    figure = charts.clip_timeline(valid, acceleration, 8.0, data.Threshold("max_jitter_mps2", 60.0), 320)
    assert "75% of frames valid" in figure.axes[0].get_title()
    assert_readable(figure, count_axes=[])


# Clip previews with the person and pose artifacts and the fitted motion ---------------------------------------

FAKE_PERSON = RecordSchema(stage="person", version=1, key="clip_id", fields=(
    pa.field("person_boxes_path", pa.string()), pa.field("person_clip_path", pa.string()),
    pa.field("person_clip_sha256", pa.string()), pa.field("person_clip_bytes", pa.int64()),
    pa.field("person_clip_num_frames", pa.int64()), pa.field("person_span_start_frame", pa.int64()),
    pa.field("person_span_end_frame", pa.int64()), pa.field("person_coverage", pa.float64())))
FAKE_POSE = RecordSchema(stage="pose", version=1, key="clip_id", fields=(
    pa.field("pose_keypoints_path", pa.string()), pa.field("pose_visible_mean", pa.float64())))
BOX = (40.0, 20.0, 100.0, 110.0)                   # main person, xyxy pixels of a 160x120 clip
KEYPOINTS = [(70.0, 30.0), (66.0, 28.0), (74.0, 28.0)] + [(50.0 + 3 * k, 40.0 + 4 * k) for k in range(14)]
FOCAL, DEPTH = 200.0, 4.0                          # the motion's camera: joint (x, y, 4 m) → 80 + 50x, 60 + 50y


def make_flat_mp4(path: Path, grey: int, num_frames: int = 8) -> str:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8, options={"threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for _ in range(num_frames):
            frame = np.full((120, 160, 3), grey, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return str(path)


def person_npz(path: Path, num_frames: int, second_person: bool = False) -> str:
    main = np.tile(np.asarray(BOX, np.float32), (num_frames, 1))
    detections = [[f, 1, *BOX, 0.9] for f in range(num_frames)]
    if second_person:
        detections += [[f, 2, 110.0, 30.0, 150.0, 100.0, 0.8] for f in range(num_frames)]
    np.savez(path, main_box=main, main_score=np.full(num_frames, 0.9, np.float32),
             main_visible=np.ones(num_frames, bool), detections=np.asarray(detections, np.float32),
             frame_size=np.asarray([160, 120], np.int32))
    return str(path)


def pose_npz(path: Path, num_frames: int) -> str:
    keypoints = np.tile(np.asarray(KEYPOINTS, np.float32), (num_frames, 1, 1))
    scores = np.full((num_frames, 17), 0.9, np.float32)
    np.savez(path, keypoints=keypoints, scores=scores, layout=np.asarray("coco17"), visible=scores > 0.3)
    return str(path)


def standing_joints() -> np.ndarray:
    """(24, 3) SMPL joints of a person 1.7 m tall standing 4 m in front of the camera (y down)."""
    joints = np.zeros((24, 3))
    joints[:, 2] = DEPTH
    height = {0: 0.0, 1: 0.1, 2: 0.1, 3: -0.1, 4: 0.5, 5: 0.5, 6: -0.3, 7: 0.9, 8: 0.9, 9: -0.4, 10: 0.95,
              11: 0.95, 12: -0.55, 13: -0.45, 14: -0.45, 15: -0.7, 16: -0.45, 17: -0.45, 18: -0.2, 19: -0.2,
              20: 0.0, 21: 0.0, 22: 0.05, 23: 0.05}
    for joint, y in height.items():
        joints[joint, 1] = y
        name_side = -1 if joint in (1, 4, 7, 10, 13, 16, 18, 20, 22) else 1 if joint in (2, 5, 8, 11, 14, 17, 19, 21,
                                                                                         23) else 0
        joints[joint, 0] = 0.15 * name_side * (2 if joint >= 16 else 1)
    return joints


def motion_npz(path: Path, num_frames: int, invalid: tuple[int, ...] = ()) -> str:
    joints = np.stack([standing_joints() + [0.02 * f, 0.0, 0.0] for f in range(num_frames)])
    valid = np.ones(num_frames, bool)
    valid[list(invalid)] = False
    motion = MotionClip(betas=np.zeros((num_frames, 10)), global_orient=np.zeros((num_frames, 3)),
                        body_pose=np.zeros((num_frames, 69)), transl=joints[:, 0], joints=joints,
                        focal=np.full(num_frames, FOCAL), image_size=np.array([120, 160]), valid=valid, fps=8.0,
                        body_model="test-body")
    path.write_bytes(motion_to_bytes(motion))
    return str(path)


class FakePersonStage(MapStage):
    """Fake: stands in for the person stage's record columns (the run's records are written by the test)."""

    name, version, schema = "person", "1", FAKE_PERSON


class FakePoseStage(MapStage):
    """Fake: stands in for the pose stage's record columns."""

    name, version, schema = "pose", "1", FAKE_POSE


@pytest.fixture()
def filter_run(tmp_path) -> Path:
    """ingest → shots → aesthetic → person → pose → smooth (person and pose: fake stages writing the shared
    artifact formats). clip0 is kept to the end with a motion file (frame 5 invalid); clip1 is refused by
    aesthetic, clip2 by person (two people), clip3 by pose after the person stage trimmed it to frames 2–6 (its
    trimmed clip is bright: grey 200)."""
    from humove.schemas import aesthetic

    stages = [("ingest", "humove.stages.ingest:IngestStage"), ("shots", "humove.stages.shots:ShotsStage"),
              ("aesthetic", "humove.stages.aesthetic:AestheticStage"),
              ("person", "test_report:FakePersonStage"), ("pose", "test_report:FakePoseStage"),
              ("smooth", "humove.stages.smooth:SmoothStage")]
    ledger = Ledger(str(tmp_path))
    ledger.write_run_info({"pipeline": "test", "max_attempts": 1,
                           "stages": [{"name": n, "class": r} for n, r in stages]})
    # The stored configs: secrets masked, thresholds as the run applied them.
    ledger.write_stage_state("aesthetic", {"config": {"min_score": 5.0, "max_synthetic_score": 0.5,
                                                      "head": "***"}})
    ledger.write_stage_state("smooth", {"config": {"max_jitter_mps2": 60.0, "min_valid_fraction": 0.6}})
    ledger.append("ingest", ingest.SCHEMA.to_table([record(ingest.SCHEMA, "v0", duration_s=4.0, fps=8.0)]))
    clip_ids = [f"v0-{i:07d}-{i + 8:07d}" for i in range(4)]
    art = tmp_path / "artifacts"
    art.mkdir()
    shots_rows = [record(shots.SCHEMA, c, input_id="v0", video_id="v0", start_s=float(i), end_s=i + 1.0,
                         clip_path=make_flat_mp4(art / f"{c}.mp4", 40), clip_sha256="0" * 64, clip_bytes=1,
                         clip_fps=8.0, clip_num_frames=8, clip_width=160, clip_height=120)
                  for i, c in enumerate(clip_ids)]
    ledger.append("shots", shots.SCHEMA.to_table(shots_rows))
    scores = {clip_ids[0]: [6.0, 6.5], clip_ids[1]: [3.0, 3.4], clip_ids[2]: [5.5, 5.7], clip_ids[3]: [7.0, 7.2]}
    # Content type: (photo, cartoon) probabilities per clip.
    content = {clip_ids[0]: (0.9, 0.1), clip_ids[1]: (0.2, 0.8), clip_ids[2]: (0.7, 0.3), clip_ids[3]: (0.6, 0.4)}
    aesthetic_rows = []
    for c, values in scores.items():
        status = "rejected" if c == clip_ids[1] else "ok"
        extra = {"reason": "low_aesthetic", "value": 3.2, "by_threshold": True} if status == "rejected" else {}
        aesthetic_rows.append(record(aesthetic.SCHEMA, c, status, aesthetic_scores=values, aesthetic_frames=[0, 4],
                                     aesthetic_mean=float(np.mean(values)), backend="laion-v2",
                                     aesthetic_scale="laion-aesthetic-v2 (1–10)", synthetic_score=content[c][1],
                                     content_type="photo" if content[c][0] > 0.5 else "cartoon",
                                     content_type_labels=["photo", "cartoon"], content_type_scores=list(content[c]),
                                     **extra))
    ledger.append("aesthetic", aesthetic.SCHEMA.to_table(aesthetic_rows))
    trimmed = make_flat_mp4(art / "trimmed.mp4", 200, num_frames=4)
    person_rows = [
        record(FAKE_PERSON, clip_ids[0], person_boxes_path=person_npz(art / "p0.npz", 8), person_coverage=1.0),
        record(FAKE_PERSON, clip_ids[2], "rejected", reason="two_people", value=2.0,
               person_boxes_path=person_npz(art / "p2.npz", 8, second_person=True), person_coverage=0.9),
        record(FAKE_PERSON, clip_ids[3], person_boxes_path=person_npz(art / "p3.npz", 4), person_clip_path=trimmed,
               person_clip_sha256="1" * 64, person_clip_bytes=1, person_clip_num_frames=4,
               person_span_start_frame=2, person_span_end_frame=6, person_coverage=0.5),
    ]
    ledger.append("person", FAKE_PERSON.to_table(person_rows))
    pose_rows = [record(FAKE_POSE, clip_ids[0], pose_keypoints_path=pose_npz(art / "k0.npz", 8),
                        pose_visible_mean=17.0),
                 record(FAKE_POSE, clip_ids[3], "rejected", reason="too_few_keypoints", value=4.0,
                        pose_keypoints_path=pose_npz(art / "k3.npz", 4), pose_visible_mean=4.0)]
    ledger.append("pose", FAKE_POSE.to_table(pose_rows))
    ledger.append("smooth", smooth.SCHEMA.to_table([
        record(smooth.SCHEMA, clip_ids[0], motion_path=motion_npz(art / "m0.npz", 8, invalid=(5,)),
               motion_num_frames=8, motion_jitter_mps2=3.0, motion_valid_fraction=0.875)]))
    return tmp_path


CLIPS = [f"v0-{i:07d}-{i + 8:07d}" for i in range(4)]
PREVIEW = ReportOptions(preview_width=160, preview_frames=8)  # the clips' own size: artifact pixels = preview pixels


def colour_near(image: np.ndarray, x: float, y: float, colour, radius: int = 2, tolerance: int = 60) -> bool:
    patch = image[int(y) - radius:int(y) + radius + 1, int(x) - radius:int(x) + radius + 1].astype(int)
    return bool((np.abs(patch - np.asarray(colour)).max(axis=-1) < tolerance).any())


def test_overlays_draw_boxes_keypoints_and_the_fitted_joints(tmp_path):
    person = dict(np.load(person_npz(tmp_path / "p.npz", 8, second_person=True)))
    pose = dict(np.load(pose_npz(tmp_path / "k.npz", 8)))
    motion = load_motion(motion_npz(tmp_path / "m.npz", 8, invalid=(5,)))
    image = Image.new("RGB", (320, 240), (40, 40, 40))  # twice the artifacts' 160x120
    Overlays(person, pose, motion).draw(image, 0, native_size=(160, 120))
    frame = np.asarray(image)
    x1, y1, x2, y2 = (2 * v for v in BOX)
    assert colour_near(frame, x1, (y1 + y2) / 2, MAIN_BOX_COLOUR) and colour_near(frame, x2, y1, MAIN_BOX_COLOUR)
    assert colour_near(frame, 220, 120, OTHER_BOX_COLOUR)  # the second person's box
    assert all(colour_near(frame, 2 * x, 2 * y, POINT_COLOUR) for x, y in KEYPOINTS)
    head = standing_joints()[15]  # projected through the motion's camera, scaled to the image
    assert colour_near(frame, 2 * (80 + FOCAL * head[0] / DEPTH), 2 * (60 + FOCAL * head[1] / DEPTH), SMPL_COLOUR)
    assert not colour_near(frame, 20, 120, MAIN_BOX_COLOUR)  # left of the box: the plain background


def test_previews_of_kept_and_refused_clips(filter_run):
    out = filter_run / "report.html"
    write_report(Ledger(str(filter_run)), str(out), PREVIEW)
    text = out.read_text()
    found = cards(text)
    assert set(found) == set(CLIPS)
    assert [clip_id for clip_id, card in found.items() if card["outcome"] == "kept"] == [CLIPS[0]]

    # The kept clip has a motion file: the preview is the clip (120 px) above the 3D view (80 px), every frame.
    kept = found[CLIPS[0]]
    frames = video_frames(filter_run / kept["video"])
    assert len(frames) == 8 and frames[0].shape == (200, 160, 3)
    assert colour_near(frames[0][:120], BOX[0], 60, MAIN_BOX_COLOUR, tolerance=80)
    assert frames[0][130:190].mean() > 200  # the 3D view's light background …
    assert (np.abs(frames[0][125:200].astype(int) - [30, 136, 229]).max(axis=-1) < 80).any()  # … a left limb
    timeline = np.asarray(Image.open(filter_run / kept["timeline"]).convert("RGB"))
    assert timeline.shape[1] == 160 and "validity and jitter" in text
    assert "aesthetic 6.25" in kept["meta"]

    # Refused clips, one per reason, with the stage and why; no motion file: no 3D view, no timeline.
    assert found[CLIPS[1]]["note"] == "aesthetic: low_aesthetic (3.2)" and found[CLIPS[1]]["timeline"] is None
    assert video_frames(filter_run / found[CLIPS[1]]["video"])[0].shape == (120, 160, 3)
    assert found[CLIPS[2]]["note"] == "person: two_people (2)"
    two_people = video_frames(filter_run / found[CLIPS[2]]["video"])[4]
    assert colour_near(two_people, 110, 60, OTHER_BOX_COLOUR, tolerance=40)
    # clip3 is read through current_clip: the trimmed (bright) clip, its frames aligned to the artifacts.
    trimmed = found[CLIPS[3]]
    assert trimmed["note"] == "pose: too_few_keypoints (4)" and "person span 2–6" in trimmed["meta"]
    frames = video_frames(filter_run / trimmed["video"])
    assert len(frames) == 4 and frames[0][5:15, 5:15].mean() > 180  # grey 200, not the shots clip's 40

    for reason in ("low_aesthetic", "two_people", "too_few_keypoints"):
        assert reason in section(text, "rejections")
    # Thresholds from the stored configs on the decided histograms, the secret-masked config notwithstanding.
    assert 'alt="aesthetic histogram of aesthetic_mean, threshold min_score: keeps ≥ 5"' in text
    assert 'alt="aesthetic histogram of synthetic_score, threshold max_synthetic_score: keeps ≤ 0.5"' in text


def test_previews_are_bounded_cached_and_pruned(filter_run):
    out = filter_run / "report.html"
    one = ReportOptions(kept_clips=1, examples_per_reason=0, preview_width=64, preview_frames=4)
    write_report(Ledger(str(filter_run)), str(out), one)
    assert len(re.findall(r"<video ", out.read_text())) == 1  # the kept clip only: no refused examples
    media = filter_run / "report"
    files = {p.name: p.stat().st_mtime_ns for p in media.iterdir()}
    kept = cards(out.read_text())[CLIPS[0]]
    clip_files = {Path(kept["video"]).name, Path(kept["timeline"]).name}
    assert clip_files < set(files) and len(files) > 10  # the preview, its timeline and the charts

    write_report(Ledger(str(filter_run)), str(out), one)  # nothing changed: nothing drawn again
    assert {p.name: p.stat().st_mtime_ns for p in media.iterdir()} == files

    (media / "notes.txt").write_text("mine")  # not the report's: never touched
    motion_npz(filter_run / "artifacts" / "m0.npz", 8, invalid=(1, 2))  # the motion changed
    write_report(Ledger(str(filter_run)), str(out), one)
    now = {p.name: p.stat().st_mtime_ns for p in media.iterdir()}
    assert not clip_files & set(now) and len(set(now) - set(files)) == 3  # preview, timeline, notes.txt are new
    assert all(now[name] == files[name] for name in set(files) - clip_files)  # the charts did not change

    two = ReportOptions(kept_clips=6, examples_per_reason=2, preview_width=64, preview_frames=4)
    folder = MediaFolder(str(out))
    assert folder.link == "report"
    write_report(Ledger(str(filter_run)), str(out), two)
    assert len(re.findall(r"<video ", out.read_text())) == 4


def test_clips_outside_the_run_dir_are_not_read(filter_run, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    ledger = Ledger(str(filter_run))
    row = ledger.current()["shots"].to_pylist()[0]
    row["clip_path"] = make_flat_mp4(elsewhere / "private.mp4", 90)
    ledger.append("shots", shots.SCHEMA.to_table([row]))
    out = filter_run / "report.html"
    write_report(Ledger(str(filter_run)), str(out), TINY)
    card = cards(out.read_text())[row["id"]]
    assert card["video"] is None and "private.mp4 is outside the run dir" in card["problem"]


def test_missing_or_broken_artifacts_give_plain_previews_or_a_note(filter_run):
    for path in (filter_run / "artifacts").glob("[pk]*.npz"):
        path.unlink()
    (filter_run / "artifacts" / "m0.npz").write_bytes(b"not an npz")
    out = filter_run / "report.html"
    write_report(Ledger(str(filter_run)), str(out), TINY)
    found = cards(out.read_text())
    assert all(found[clip_id]["video"] for clip_id in CLIPS[1:])  # plain frames
    assert found[CLIPS[0]]["video"] and found[CLIPS[0]]["timeline"] is None  # no motion to show
    assert "motion not drawn: MotionFileError" in found[CLIPS[0]]["problem"]
    assert "pose keypoints not drawn: FileNotFoundError" in found[CLIPS[3]]["problem"]


def test_histograms_stack_kept_and_rejected_and_flatten_per_frame_scores(filter_run):
    ledger = Ledger(str(filter_run))
    table = ledger.current()["aesthetic"]
    columns = {m.title: m for m in data.measures(table, data.stage_thresholds(ledger, "aesthetic"))}
    assert binned(columns["aesthetic_mean"]) == values_in_bins(columns["aesthetic_mean"], [5.6, 6.25, 7.1], [3.2])
    assert columns["aesthetic_mean"].thresholds == [data.Threshold("min_score", 5.0)]
    assert list(columns)[:2] == ["aesthetic_mean", "synthetic_score"]  # decided measures first
    assert binned(columns["aesthetic_scores (all values)"]) == values_in_bins(
        columns["aesthetic_scores (all values)"], [5.5, 5.7, 6.0, 6.5, 7.0, 7.2], [3.0, 3.4])


def binned(measure: data.Measure) -> tuple[list[int], list[int]]:
    return measure.kept, measure.rejected


def values_in_bins(measure: data.Measure, kept: list[float], rejected: list[float]) -> tuple[list[int], list[int]]:
    """The kept and rejected counts per bin that these values give over the measure's bins (spanning them)."""
    edges = np.asarray(measure.edges)
    assert edges[0] == pytest.approx(min(kept + rejected)) and edges[-1] == pytest.approx(max(kept + rejected))
    return np.histogram(kept, edges)[0].tolist(), np.histogram(rejected, edges)[0].tolist()


def test_thresholds_come_from_the_stored_config_and_the_declared_measure(filter_run):
    ledger = Ledger(str(filter_run))
    assert data.stage_thresholds(ledger, "smooth") == {
        "motion_jitter_mps2": [data.Threshold("max_jitter_mps2", 60.0)],
        "motion_valid_fraction": [data.Threshold("min_valid_fraction", 0.6)]}
    assert data.stage_thresholds(ledger, "person") == {}  # a custom stage: its code is not imported
    (filter_run / "smooth" / "_stage.json").write_text("{not json")
    assert data.stage_thresholds(ledger, "smooth") == {}  # unreadable: no lines, the report stands
    (filter_run / "smooth" / "_stage.json").write_text(json.dumps({"config": {"max_jitter_mps2": "60; drop"}}))
    assert data.stage_thresholds(ledger, "smooth") == {}  # not a number: not drawn


def test_the_content_type_is_shown_as_a_histogram_and_counts_per_label(filter_run):
    """`synthetic_score` gets its kept/rejected histogram like every decided measure; the per-label scores are not
    mixed into one histogram; the clips are counted per most probable content type."""
    table = Ledger(str(filter_run)).current()["aesthetic"]
    columns = {m.title: m for m in data.measures(table)}
    assert binned(columns["synthetic_score"]) == values_in_bins(columns["synthetic_score"], [0.1, 0.3, 0.4], [0.8])
    assert not any(name.startswith("content_type_scores") for name in columns)
    assert data.content_type_counts(table) == {"photo": {"kept": 3, "rejected": 0},
                                               "cartoon": {"kept": 0, "rejected": 1}}
    assert_readable(charts.content_types("aesthetic", data.content_type_counts(table)), count_axes=["x"])
    out = filter_run / "report.html"
    write_report(Ledger(str(filter_run)), str(out), TINY)
    assert 'alt="aesthetic content types"' in out.read_text()
    assert data.content_type_counts(Ledger(str(filter_run)).current()["shots"]) == {}


# The report in a browser -------------------------------------------------------------------------------------------

# Waits for every video to have a frame (or an error), then says what loaded.
LOAD_CHECK = """(async () => {
  const videos = [...document.querySelectorAll('video')];
  await Promise.all(videos.map(video => video.readyState >= 2 || video.error ? null : new Promise(done => {
    video.addEventListener('loadeddata', done); video.addEventListener('error', done); setTimeout(done, 20000);
  })));
  return {
    images: [...document.images].map(image => ({src: image.getAttribute('src').slice(0, 40),
                                                loaded: image.complete && image.naturalWidth > 0})),
    videos: videos.map(video => ({src: video.getAttribute('src'), ready: video.readyState,
                                  error: video.error && video.error.code, width: video.videoWidth})),
  };
})()"""


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(),
                    reason="needs Debian's chromium (/usr/bin/chromium): apt-get install -y chromium")
def test_every_image_and_video_of_the_report_loads_in_chromium(filter_run, tmp_path_factory):
    from headless_chromium import HeadlessChromium

    out = filter_run / "report.html"
    write_report(Ledger(str(filter_run)), str(out), TINY)
    text = out.read_text()
    with HeadlessChromium(tmp_path_factory.mktemp("chromium-profile")) as browser:
        loaded = browser.evaluate(out.as_uri(), LOAD_CHECK)
        assert len(loaded["images"]) == text.count("<img ") > 10  # charts and the kept clip's timeline
        assert [image for image in loaded["images"] if not image["loaded"]] == []
        assert len(loaded["videos"]) == 4
        assert all(video["ready"] >= 2 and video["error"] is None and video["width"] == 64
                   for video in loaded["videos"]), loaded["videos"]

        # The check sees a file that does not load.
        gone = filter_run / loaded["videos"][0]["src"]
        gone.unlink()
        (filter_run / cards(text)[CLIPS[0]]["timeline"]).write_bytes(b"not a png")
        loaded = browser.evaluate(out.as_uri(), LOAD_CHECK)
        assert sum(not image["loaded"] for image in loaded["images"]) == 1
        failed = [video["src"] for video in loaded["videos"] if video["error"]]
        assert failed == [gone.relative_to(filter_run).as_posix()]


SCALE_SCHEMA = RecordSchema("scale", 1, "clip_id", (pa.field("score", pa.float32()),
                                                    pa.field("frame_scores", pa.list_(pa.float64())),
                                                    pa.field("clip_num_frames", pa.int64()),
                                                    pa.field("flat", pa.float64())))


def test_histograms_are_binned_in_sql_like_numpy_and_leave_out_nan_and_missing():
    """The bins counted by duckdb are those numpy gives over the finite values (NaN and missing left out, list
    values flattened); a measure with one finite value has no histogram."""
    rows = [record(SCALE_SCHEMA, f"c{i:03d}", "ok" if i % 4 else "rejected", score=[0.5, 1.25, float("nan"), None,
                   3.0, 7.5, 2.25][i % 7], frame_scores=[i * 0.1, float("nan")] if i % 5 else None,
                   clip_num_frames=40 + 7 * i, flat=2.0 if i == 3 else float("nan")) for i in range(40)]
    found = {m.column: m for m in data.measures(SCALE_SCHEMA.to_table(rows))}
    assert "flat" not in found
    for column, values in (("score", lambda row: [row["score"]]), ("frame_scores", lambda row: row["frame_scores"]),
                           ("clip_num_frames", lambda row: [row["clip_num_frames"]])):
        parts = [[v for row in rows if row["status"] == status for v in values(row) or []
                  if v is not None and np.isfinite(v)] for status in ("ok", "rejected")]
        expected = data.Measure.of_values(column, column, "", *parts, integer=column == "clip_num_frames")
        assert found[column].edges == pytest.approx(expected.edges), column
        assert (found[column].kept, found[column].rejected) == (expected.kept, expected.rejected), column
    assert found["clip_num_frames"].integer and found["frame_scores"].is_list


@pytest.mark.parametrize("n", [0, 1, 3, 7, 40])
def test_samples_chosen_in_sql_are_spread_over_the_sorted_ids_like_evenly(n):
    ids = [f"c{i:03d}" for i in (17, 3, 29, 11, 5, 23, 2, 31, 13, 19, 7, 37, 41, 43)]
    rows = [record(SCALE_SCHEMA, clip_id, "rejected", reason="low" if i % 3 else None) for i, clip_id in enumerate(ids)]
    rows += [record(SCALE_SCHEMA, f"k{clip_id}") for clip_id in ids]
    table = SCALE_SCHEMA.to_table(rows)
    by_reason = data.refused_examples(table, n)
    for reason in ("low", "unspecified"):
        wanted = sorted(row["id"] for row in rows if row["status"] == "rejected"
                        and (row["reason"] or "unspecified") == reason)
        assert [row["id"] for row in by_reason.get(reason, [])] == data.evenly(wanted, n)
    clips = data.Records(table.append_column("clip_path", pa.array(["x.mp4"] * len(rows))))
    assert data.kept_clip_ids({"clips": clips}, n) == (data.evenly(sorted(f"k{i}" for i in ids), n), len(ids))


def test_the_report_reads_the_current_parquet_and_writes_it_again_when_records_are_newer(run_dir):
    ledger = Ledger(str(run_dir))
    ledger.write_current()
    current = run_dir / "ingest" / "current.parquet"
    written = current.stat().st_mtime_ns
    assert data.stage_records(Ledger(str(run_dir)))["ingest"].num_rows == 6
    assert current.stat().st_mtime_ns == written  # up to date: read as it is
    ledger.append("ingest", ingest.SCHEMA.to_table([record(ingest.SCHEMA, "v-late", "rejected", reason="too_late")]))
    records = data.stage_records(Ledger(str(run_dir)))
    assert records["ingest"].num_rows == 7 and current.stat().st_mtime_ns > written
    assert [reason for reason, _, _ in data.rejection_reasons(records["ingest"])] == ["too_late", "too_short"]


def test_the_funnel_counted_by_duckdb_is_the_ledgers_summary(run_dir):
    """ok, rejected by reason, errors, quarantined and pending (of the listing, of the stage before's ok ids)."""
    ledger = Ledger(str(run_dir))
    listed = ledger.current()["ingest"]["input_id"].to_pylist()
    ledger.write_listed_inputs("ingest", [*listed, "v-not-yet"])
    ledger.append("ingest", ingest.SCHEMA.to_table([
        record(ingest.SCHEMA, "v-new", input_id="v-new", duration_s=3.0),
        record(ingest.SCHEMA, listed[5], "error", error_type="ValueError", error_message="again") | {"attempt": 3}]))
    ledger.write_listed_inputs("ingest", [*listed, "v-not-yet", "v-new"])
    expected = Ledger(str(run_dir)).summary()
    assert expected[0].pending == 1 and expected[0].quarantined == 1 and expected[1].pending == 1
    assert data.summary(ledger, data.stage_records(Ledger(str(run_dir)))) == expected
