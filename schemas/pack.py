"""Record schema of the `pack` stage: one record per clip whose dataset sample was built, keyed by `clip_id`.

The sample itself is an artifact: its tar members laid end to end (`<run_dir>/artifacts/pack/<clip_id>.tar`, no
end-of-archive marker), which the `shards` stage appends to a shard as they are; the clip's motion sums for the
dataset statistics are another (`<clip_id>.stats.npz`, `humove.sharding.MotionSums`). The sample spec itself is
`humove.schemas.shard`. The `shards` stage deletes the `.tar` once the sample is published in a closed shard
(`sample_path` then names a file that is gone on purpose: the shard holds its bytes); the sums stay.
"""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="pack",
    version=1,
    key="clip_id",
    fields=(
        pa.field("sample_path", pa.string()),            # the sample's tar members (a fragment of a shard)
        pa.field("sample_fragment_bytes", pa.int64()),   # its size: whole 512-byte blocks
        pa.field("sample_bytes", pa.int64()),            # sum of the sample's member sizes (the index's sample_bytes)
        pa.field("sample_split", pa.string()),           # train | val
        pa.field("sample_val_fraction", pa.float64()),   # the share of source videos in val it was drawn with
        pa.field("sample_build_digest", pa.string()),    # what it was built from (the index's build_digest)
        pa.field("sample_clip_sha256", pa.string()),     # sha256 of the clip bytes it holds, hashed here
        pa.field("sample_has_motion", pa.bool_()),
        pa.field("sample_stats_path", pa.string()),      # the clip's motion sums; null without a motion file
    ),
)
