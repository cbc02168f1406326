"""Record schema of the `shards` stage: one record per clip written to a shard, keyed by `clip_id`.

The shard sample spec itself (members, metadata, index, dataset.json) is `humove.schemas.shard`.
"""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="shards",
    version=1,
    key="clip_id",
    fields=(
        pa.field("video_id", pa.string()),        # source video of the clip
        pa.field("shard_name", pa.string()),      # e.g. humove-train-000003.tar, relative to the output folder
        pa.field("shard_split", pa.string()),     # train | val
        pa.field("sample_bytes", pa.int64()),     # sum of the sample's member sizes
    ),
)
