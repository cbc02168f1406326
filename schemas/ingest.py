"""Record schema of the `ingest` stage: one record per input video, keyed by `video_id` (content hash)."""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="ingest",
    version=3,
    key="video_id",
    fields=(
        pa.field("source_path", pa.string()),     # local path or URL as given (to read it again; not in the dataset)
        pa.field("source_uri", pa.string()),      # URL, or path relative to the listed folder / manifest (dataset)
        pa.field("keyword", pa.string()),
        pa.field("category", pa.string()),
        pa.field("subcategory", pa.string()),
        pa.field("source", pa.string()),          # where it came from (site, dataset)
        pa.field("licence", pa.string()),
        pa.field("size_bytes", pa.int64()),
        pa.field("duration_s", pa.float64()),     # the header's, or the packets' span when the header lies
        pa.field("header_duration_s", pa.float64()),  # what the container declares (null: nothing)
        pa.field("fps", pa.float64()),            # average frame rate
        pa.field("variable_fps", pa.bool_()),
        pa.field("width", pa.int32()),            # display size, after rotation
        pa.field("height", pa.int32()),
        pa.field("codec", pa.string()),
        pa.field("rotation", pa.int32()),         # degrees from the stream's display matrix
        pa.field("num_frames", pa.int64()),
        pa.field("has_audio", pa.bool_()),
    ),
)
