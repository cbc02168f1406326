"""`humove status` table and `humove report` HTML, on a run dir written through the real ledger."""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from humove.ledger import Ledger
from humove.report import status_table, write_report
from humove.schemas import ingest, shards, shots
from humove.schemas.records import RecordSchema
from humove.schemas.shard import DatasetManifest, ShardInfo, SplitCounts

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

    assert "http" not in text.lower()  # no external URLs: no scripts, fonts or images fetched
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
        shards=[ShardInfo(name="humove-train-000000.tar", split="train", samples=3, bytes=30720, sha256="0" * 64)],
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
    assert "No kept clips yet" in text and "No errors." in text and "http" not in text.lower()
    assert "No dataset written yet" in text
