"""A file an earlier stage of the run wrote (the downloaded or listed video, a clip, a motion file) that is not there
when a later stage reads it — a run dir the cluster's nodes do not share, a file deleted by hand — is an `error`
record, retried on the next run, never a rejection (a rejection is final: the item would be lost for good).
Ingest's case is tested in tests/test_ingest.py; shards turns a sample it cannot read into an `error` record too."""

from __future__ import annotations

import re

import pytest

from humove.worker import StageWorker

CLIP_COLUMNS = {"clip_num_frames": 24, "clip_fps": 24.0, "clip_width": 64, "clip_height": 48, "start_s": 0.0,
                "end_s": 1.0, "video_id": "v1"}


@pytest.mark.parametrize(("stage", "config", "row"), [
    ("shots", {}, {"video_id": "v1", "source_path": "{gone}/video.mp4", "fps": 24.0, "width": 64, "height": 48}),
    ("aesthetic", {"backend": "technical-quality"}, {"clip_id": "c1", "clip_path": "{gone}/c1.mp4", **CLIP_COLUMNS}),
    ("smooth", {}, {"clip_id": "c1", "clip_path": "{gone}/c1.mp4", "smpl_motion_path": "{gone}/c1.raw.npz",
                    **CLIP_COLUMNS}),
    ("pack", {}, {"clip_id": "c1", "clip_path": "{gone}/c1.mp4", **CLIP_COLUMNS}),
])
def test_a_missing_upstream_file_is_an_error_to_retry_never_a_rejection(tmp_path, stage, config, row):
    gone = tmp_path / "artifacts"
    item = {"input_id": "x1", **{key: value.format(gone=gone) if isinstance(value, str) else value
                                for key, value in row.items()}}
    [[record]] = StageWorker(stage, config, str(tmp_path)).process([{"item": item, "attempt": 1}])
    assert record["status"] == "error", record
    assert str(gone) in record["error_message"], record["error_message"]
    assert re.search("does not exist|No such file", record["error_message"]), record["error_message"]
