"""Record schema of the `shots` stage: one record per clip, keyed by `clip_id` (video id, start, end)."""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="shots",
    version=1,
    key="clip_id",
    fields=(
        pa.field("video_id", pa.string()),        # source video (joins to ingest)
        pa.field("shot_index", pa.int32()),       # shot number within the source video
        pa.field("window_index", pa.int32()),     # window number within a long shot (0 if not split)
        pa.field("start_s", pa.float64()),        # in the source video
        pa.field("end_s", pa.float64()),
        pa.field("start_frame", pa.int64()),      # source-video frame numbers, end exclusive
        pa.field("end_frame", pa.int64()),
        pa.field("clip_path", pa.string()),       # artifact URL of the H.264 MP4
        pa.field("clip_sha256", pa.string()),
        pa.field("clip_bytes", pa.int64()),
        pa.field("clip_fps", pa.float64()),       # constant frame rate of the written clip
        pa.field("clip_num_frames", pa.int64()),
        pa.field("clip_width", pa.int32()),
        pa.field("clip_height", pa.int32()),
        pa.field("detector", pa.string()),        # e.g. "content(threshold=27)"
    ),
)
