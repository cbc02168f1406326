"""`humove status` table and `humove report` HTML, on a run dir written through the real ledger."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from rich.console import Console

from humove.ledger import Ledger
from humove.report import status_table, write_report
from humove.schemas import ingest, shards, shots
from humove.schemas.records import RecordSchema
from humove.schemas.shard import DatasetManifest, ShardInfo, SplitCounts
from humove.stage import MapStage

STAGES = {"ingest": (ingest.SCHEMA, "humove.stages.ingest:IngestStage"),
          "shots": (shots.SCHEMA, "humove.stages.shots:ShotsStage"),
          "shards": (shards.SCHEMA, "humove.stages.shards:ShardsStage")}


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


def without_images(text: str) -> str:
    """The report without its inline PNGs (base64 text can spell "http" by chance)."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", text)


def record(schema: RecordSchema, record_id: str, status: str = "ok", input_id: str | None = None,
           **fields) -> dict:
    return {"id": record_id, "input_id": input_id or record_id, "status": status, "attempt": 1,
            "stage_version": "1", "schema_version": schema.version,
            "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), **fields}


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    """A run of 6 videos: one rejected too short, one error; 4 clips of which one is rejected by shards."""
    ledger = Ledger(str(tmp_path))
    ledger.write_run_info({"pipeline": "test", "max_attempts": 3,
                           "stages": [{"name": name, "class": ref} for name, (_, ref) in STAGES.items()]})
    video_ids = [f"v{i:016x}" for i in range(6)]
    ingest_rows = [record(ingest.SCHEMA, v, duration_s=5.0 + i, fps=[25.0, 30.0][i % 2], width=64, height=48)
                   for i, v in enumerate(video_ids[:4])]
    ingest_rows.append(record(ingest.SCHEMA, video_ids[4], "rejected", reason="too_short", value=0.4,
                              detail="0.4 s < 1.0 s", duration_s=0.4))
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
                             detail="clip changed after it was recorded", video_id=clips[3]["video_id"]))
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


def test_report_is_self_contained_and_names_stages_and_reasons(run_dir):
    out = run_dir / "report" / "report.html"
    assert write_report(Ledger(str(run_dir)), str(out)) == str(out)
    text = out.read_text()

    assert "http" not in without_images(text).lower()  # no external URLs: no scripts, fonts or images fetched
    assert not re.search(r"""(src|href)=['"](?!data:)""", text)
    for name in ("ingest", "shots", "shards", "too_short", "clip_hash_mismatch", "InvalidDataError",
                 "moov atom not found"):
        assert name in text
    # Histograms of the float measures that vary (durations, fps, clip length), not of constant ones.
    assert "ingest histograms" in text and "shots histograms" in text

    images = re.findall(r"<img[^>]*alt='([^']*)'[^>]*src='data:image/png;base64,([^']+)'", text)
    decoded = {alt: Image.open(io.BytesIO(base64.b64decode(data))) for alt, data in images}
    assert "funnel: counts per stage" in decoded
    # Thumbnails: first and middle frame of the clips kept by the last stage (3 of the 4 clips).
    first_frames = [img for alt, img in images if alt == "first frame"]
    middle_frames = [img for alt, img in images if alt == "middle frame"]
    assert len(first_frames) == len(middle_frames) == 3
    middle = np.asarray(Image.open(io.BytesIO(base64.b64decode(middle_frames[0]))).convert("L"), float)
    assert abs(middle.mean() - (20 + 25 * 4)) < 12  # frame 4 of 8, grey level 120 (seed 0)
    assert "-0000000-0000008" in text and "v0000000000000003-0000000-0000008" not in text.split("Sample clips")[1]


def test_report_shows_the_dataset_counts(run_dir):
    manifest = DatasetManifest(
        total_samples=3, splits={"train": SplitCounts(samples=3, videos=3, shards=1, bytes=30720),
                                 "val": SplitCounts()},
        shards=[ShardInfo(name="humove-train-000000.tar", split="train", samples=3, bytes=30720, blake3="0" * 64)],
    )
    (run_dir / "dataset").mkdir(exist_ok=True)
    (run_dir / "dataset" / "dataset.json").write_text(manifest.to_json_text())
    write_report(Ledger(str(run_dir)), str(run_dir / "report.html"))
    dataset = (run_dir / "report.html").read_text().split("<h2>Dataset</h2>")[1].split("</section>")[0]
    assert "3 samples in 1 shards" in dataset
    assert "<td>train</td><td>3</td><td>3</td><td>1</td>" in dataset


def test_report_of_an_empty_run(tmp_path):
    ledger = Ledger(str(tmp_path))
    ledger.write_run_info({"pipeline": "test", "stages": [{"name": n, "class": r} for n, (_, r) in STAGES.items()]})
    out = tmp_path / "report.html"
    write_report(ledger, str(out))
    text = out.read_text()
    assert "No kept clips yet" in text and "No errors." in text and "http" not in without_images(text).lower()
    assert "No dataset written yet" in text


# Thumbnails with the person and pose artifacts drawn ---------------------------------------------------------

FAKE_PERSON = RecordSchema(stage="person", version=1, key="clip_id", fields=(
    pa.field("person_boxes_path", pa.string()), pa.field("person_clip_path", pa.string()),
    pa.field("person_clip_sha256", pa.string()), pa.field("person_clip_bytes", pa.int64()),
    pa.field("person_clip_num_frames", pa.int64()), pa.field("person_span_start_frame", pa.int64()),
    pa.field("person_span_end_frame", pa.int64()), pa.field("person_coverage", pa.float64())))
FAKE_POSE = RecordSchema(stage="pose", version=1, key="clip_id", fields=(
    pa.field("pose_keypoints_path", pa.string()), pa.field("pose_visible_mean", pa.float64())))
BOX = (40.0, 20.0, 100.0, 110.0)                   # main person, xyxy pixels of a 160x120 clip
KEYPOINTS = [(70.0, 30.0), (66.0, 28.0), (74.0, 28.0)] + [(50.0 + 3 * k, 40.0 + 4 * k) for k in range(14)]


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


class FakePersonStage(MapStage):
    """Fake: stands in for the person stage's record columns (the run's records are written by the test)."""

    name, version, schema = "person", "1", FAKE_PERSON


class FakePoseStage(MapStage):
    """Fake: stands in for the pose stage's record columns."""

    name, version, schema = "pose", "1", FAKE_POSE


@pytest.fixture()
def filter_run(tmp_path) -> Path:
    """ingest → shots → aesthetic → person → pose (person and pose: fake stages writing the shared artifact
    formats). clip0 is kept to the end; clip1 is refused by aesthetic, clip2 by person (two people), clip3 by
    pose after the person stage trimmed it to frames 2–6 (its trimmed clip is bright: grey 200)."""
    from humove.schemas import aesthetic

    stages = [("ingest", "humove.stages.ingest:IngestStage"), ("shots", "humove.stages.shots:ShotsStage"),
              ("aesthetic", "humove.stages.aesthetic:AestheticStage"),
              ("person", "test_report:FakePersonStage"), ("pose", "test_report:FakePoseStage")]
    ledger = Ledger(str(tmp_path))
    ledger.write_run_info({"pipeline": "test", "max_attempts": 1,
                           "stages": [{"name": n, "class": r} for n, r in stages]})
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
    return tmp_path


def report_cards(text: str) -> dict[str, dict]:
    """clip id → {"text": the card's caption, "images": {alt: RGB array}} for every thumbnail card."""
    cards = {}
    for body in re.findall(r"<div class='card'>(.*?)</div>", text):
        caption = re.search(r"<p>(.*?)</p>", body).group(1)
        images = {alt: np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
                  for alt, data in re.findall(r"<img alt='([^']*)' src='data:image/png;base64,([^']+)'", body)}
        cards[caption.split("<br>")[0]] = {"text": caption, "images": images}
    return cards


def colour_near(image: np.ndarray, x: float, y: float, colour, radius: int = 2, tolerance: int = 60) -> bool:
    patch = image[int(y) - radius:int(y) + radius + 1, int(x) - radius:int(x) + radius + 1].astype(int)
    return bool((np.abs(patch - np.asarray(colour)).max(axis=-1) < tolerance).any())


def test_report_draws_boxes_and_keypoints_on_kept_and_refused_clips(filter_run):
    from humove.report import MAIN_BOX_COLOUR, OTHER_BOX_COLOUR, POINT_COLOUR

    out = filter_run / "report.html"
    write_report(Ledger(str(filter_run)), str(out))
    text = out.read_text()
    cards = report_cards(text)
    clip0, clip1, clip2, clip3 = (f"v0-{i:07d}-{i + 8:07d}" for i in range(4))
    assert set(cards) == {clip0, clip1, clip2, clip3}

    kept = cards[clip0]
    assert set(kept["images"]) == {"first frame", "middle frame"} and "kept" in kept["text"]
    first = kept["images"]["first frame"]
    x1, y1, x2, y2 = BOX
    assert colour_near(first, x1, (y1 + y2) / 2, MAIN_BOX_COLOUR) and colour_near(first, x2, y1, MAIN_BOX_COLOUR)
    assert not colour_near(first, 20, 60, MAIN_BOX_COLOUR)  # left of the box: the clip's flat grey
    assert all(colour_near(first, x, y, POINT_COLOUR) for x, y in KEYPOINTS)
    assert "aesthetic 6.25" in kept["text"]

    # Refused clips, one per reason, with the stage, reason and value; alt texts say they were refused.
    aesthetic_card = cards[clip1]
    assert set(aesthetic_card["images"]) == {"refused first frame", "refused middle frame"}
    assert "aesthetic: low_aesthetic (3.2)" in aesthetic_card["text"]
    assert not colour_near(aesthetic_card["images"]["refused first frame"], x1, 60, MAIN_BOX_COLOUR)  # no artifact
    two_people = cards[clip2]["images"]["refused middle frame"]
    assert "person: two_people (2)" in cards[clip2]["text"]
    assert colour_near(two_people, 110, 60, OTHER_BOX_COLOUR, tolerance=30)  # the second person's box
    assert colour_near(two_people, x1, 60, MAIN_BOX_COLOUR)
    # clip3 is read through current_clip: the trimmed (bright) clip, its frames aligned to the artifacts.
    trimmed = cards[clip3]
    assert "pose: too_few_keypoints (4)" in trimmed["text"] and "person span 2–6" in trimmed["text"]
    frame = trimmed["images"]["refused first frame"]
    assert frame[5:15, 5:15].mean() > 180  # grey 200, not the shots clip's 40
    assert colour_near(frame, *KEYPOINTS[5], POINT_COLOUR) and colour_near(frame, x2, 60, MAIN_BOX_COLOUR)

    # Rejections by reason for every filter stage, and score histograms of kept and rejected records.
    for name in ("low_aesthetic", "two_people", "too_few_keypoints"):
        assert name in text.split("<h2>Rejection reasons</h2>")[1].split("</section>")[0]
    assert "aesthetic histograms" in text and "pose histograms" in text


def test_report_tolerates_missing_artifacts(filter_run):
    for path in (filter_run / "artifacts").glob("*.npz"):
        path.unlink()
    out = filter_run / "report.html"
    write_report(Ledger(str(filter_run)), str(out))
    cards = report_cards(out.read_text())
    assert set(cards) and all(len(card["images"]) == 2 for card in cards.values())  # plain frames


def test_histograms_stack_kept_and_rejected_and_flatten_per_frame_scores(filter_run):
    from humove.report import _plottable_columns

    columns = _plottable_columns(Ledger(str(filter_run)).current()["aesthetic"])
    assert sorted(columns["aesthetic_mean"]["kept"]) == pytest.approx([5.6, 6.25, 7.1])
    assert columns["aesthetic_mean"]["rejected"] == pytest.approx([3.2])
    assert sorted(columns["aesthetic_scores (all values)"]["kept"]) == [5.5, 5.7, 6.0, 6.5, 7.0, 7.2]
    assert sorted(columns["aesthetic_scores (all values)"]["rejected"]) == [3.0, 3.4]


def test_the_content_type_is_shown_as_a_histogram_and_counts_per_label(filter_run):
    """`synthetic_score` gets its kept/rejected histogram like every decided measure; the per-label scores are not
    mixed into one histogram; the clips are counted per most probable content type."""
    from humove.report import _content_type_chart, _content_type_counts, _plottable_columns

    table = Ledger(str(filter_run)).current()["aesthetic"]
    columns = _plottable_columns(table)
    assert sorted(columns["synthetic_score"]["kept"]) == pytest.approx([0.1, 0.3, 0.4])
    assert columns["synthetic_score"]["rejected"] == pytest.approx([0.8])
    assert not any(name.startswith("content_type_scores") for name in columns)
    assert _content_type_counts(table) == {"photo": {"kept": 3, "rejected": 0}, "cartoon": {"kept": 0, "rejected": 1}}
    chart = _content_type_chart("aesthetic", table)
    assert "alt='aesthetic content types'" in chart
    out = filter_run / "report.html"
    write_report(Ledger(str(filter_run)), str(out))
    assert chart.split("src=")[0] in out.read_text()
    assert _content_type_chart("shots", Ledger(str(filter_run)).current()["shots"]) == ""
