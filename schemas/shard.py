"""The shard sample spec, version 1: what a HuMoVe WebDataset shard holds, checked on write and on read.

A dataset folder holds:

    humove-{split}-{index:06d}.tar   WebDataset shards, split ∈ {train, val}
    index.parquet                    one row per sample: key → shard, split, position, main metadata
    dataset.json                     schema version, counts per split, shard list, motion statistics

A sample is the tar members sharing one key (the clip id, [0-9a-z-] only, so no dots):

| member              | content                                                                  |
|---------------------|--------------------------------------------------------------------------|
| `{key}.mp4`         | the clip, H.264 MP4 at a constant frame rate                             |
| `{key}.json`        | `SampleMetadata` as UTF-8 JSON (sorted keys)                             |
| `{key}.motion.npz`  | optional; the v1 motion file of `humove.schemas.motion`, F = num_frames  |

Metadata groups: top level holds what a loader needs without parsing more (key, ids, split, fps, num_frames,
width, height, duration, caption, whether motion is present); `clip` holds where the clip came from in its
source video, `source` the source video's fields (path, keyword, licence, probe), `scores` the numeric
measures of later stages (e.g. `aesthetic_score`) and `extra` any other metadata column.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from humove.schemas.motion import MotionClip, MotionFileError, load_motion

SHARD_SCHEMA_VERSION = 1
SPLITS = ("train", "val")
SHARD_NAME_FORMAT = "humove-{split}-{index:06d}.tar"
SHARD_NAME_RE = re.compile(r"^humove-(train|val)-(\d{6})\.tar$")
INDEX_FILE = "index.parquet"
MANIFEST_FILE = "dataset.json"
DEFAULT_OUTPUT_DIR = "dataset"  # the dataset folder inside a run dir, unless the shards stage sets `output`

VIDEO_EXT = "mp4"
METADATA_EXT = "json"
MOTION_EXT = "motion.npz"
SAMPLE_EXTENSIONS = (METADATA_EXT, MOTION_EXT, VIDEO_EXT)
KEY_RE = re.compile(r"^[0-9a-z][0-9a-z_-]*$")

JsonScalar = str | int | float | bool | None


class ShardSampleError(ValueError):
    """A sample breaks the shard spec; the message names the sample key and the problem."""


class SampleMetadata(BaseModel):
    """`{key}.json`. Times in seconds, sizes in pixels."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SHARD_SCHEMA_VERSION
    key: str
    clip_id: str
    video_id: str
    split: Literal["train", "val"]
    fps: float = Field(gt=0, allow_inf_nan=False)
    num_frames: int = Field(ge=1)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    duration_s: float = Field(ge=0, allow_inf_nan=False)
    has_motion: bool
    caption: str | None = None
    clip: dict[str, JsonScalar] = Field(default_factory=dict)
    source: dict[str, JsonScalar] = Field(default_factory=dict)
    scores: dict[str, float] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)

    def to_json_bytes(self) -> bytes:
        """Deterministic encoding: sorted keys, no whitespace, no NaN."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False).encode()


def build_metadata(**fields: Any) -> SampleMetadata:
    """`SampleMetadata(**fields)`, raising `ShardSampleError` that names the sample and the bad field."""
    try:
        return SampleMetadata(**fields)
    except ValidationError as exc:
        raise ShardSampleError(f"sample {fields.get('key')!r}: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(document)"
    return f"metadata field {field!r}: {first['msg']}"


@dataclass
class ShardSample:
    """A sample read back from a shard: the clip's MP4 bytes, its metadata and its motion when present."""

    key: str
    metadata: SampleMetadata
    video: bytes
    motion: MotionClip | None


def encode_sample(metadata: SampleMetadata, video: bytes, motion: bytes | None = None) -> dict[str, bytes]:
    """The members of one sample, keyed by extension (plus `__key__`), validated before they are written."""
    sample = {"__key__": metadata.key, METADATA_EXT: metadata.to_json_bytes(), VIDEO_EXT: video}
    if motion is not None:
        sample[MOTION_EXT] = motion
    validate_sample(sample)
    return sample


def validate_sample(sample: Mapping[str, Any]) -> SampleMetadata:
    """Check one sample against the spec and return its metadata.

    `sample` maps extension → bytes, as WebDataset yields it (keys starting with `__`, such as `__key__` and
    `__url__`, are bookkeeping and only `__key__` is checked). Raises `ShardSampleError`.
    """
    return _check(sample, return_motion=False)[0]


def read_sample(sample: Mapping[str, Any]) -> ShardSample:
    """Validate a raw WebDataset sample and decode it: use as `webdataset.WebDataset(urls).map(read_sample)`."""
    metadata, motion = _check(sample, return_motion=True)
    return ShardSample(key=metadata.key, metadata=metadata, video=bytes(sample[VIDEO_EXT]), motion=motion)


def _check(sample: Mapping[str, Any], return_motion: bool) -> tuple[SampleMetadata, MotionClip | None]:
    key = sample.get("__key__")
    where = f"sample {key!r}" if key is not None else "sample"
    members = {name: value for name, value in sample.items() if not name.startswith("__")}
    unknown = sorted(set(members) - set(SAMPLE_EXTENSIONS))
    if unknown:
        raise ShardSampleError(f"{where}: unknown members {unknown}, allowed {list(SAMPLE_EXTENSIONS)}")
    for ext in (METADATA_EXT, VIDEO_EXT):
        if ext not in members:
            raise ShardSampleError(f"{where}: missing member .{ext}")
    for ext, value in members.items():
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ShardSampleError(f"{where}: member .{ext} is {type(value).__name__}, expected bytes")

    try:
        metadata = SampleMetadata.model_validate_json(bytes(members[METADATA_EXT]))
    except ValidationError as exc:
        raise ShardSampleError(f"{where}: {_describe(exc)}") from exc
    if not KEY_RE.match(metadata.key):
        raise ShardSampleError(f"{where}: key {metadata.key!r} must match {KEY_RE.pattern}")
    if metadata.key != metadata.clip_id:
        raise ShardSampleError(f"{where}: key {metadata.key!r} differs from clip_id {metadata.clip_id!r}")
    if key is not None and key != metadata.key:
        raise ShardSampleError(f"{where}: metadata key {metadata.key!r} differs from the member key")
    where = f"sample {metadata.key!r}"

    video = bytes(members[VIDEO_EXT])
    # An MP4 (ISO base media file) starts with an `ftyp` box: size (4 bytes) then the type.
    if len(video) < 8 or video[4:8] != b"ftyp":
        raise ShardSampleError(f"{where}: .{VIDEO_EXT} is not an MP4 file (no ftyp box)")

    has_motion = MOTION_EXT in members
    if has_motion != metadata.has_motion:
        raise ShardSampleError(
            f"{where}: metadata has_motion={metadata.has_motion} but the .{MOTION_EXT} member is "
            f"{'present' if has_motion else 'absent'}"
        )
    motion = None
    if has_motion:
        try:
            motion = load_motion(bytes(members[MOTION_EXT]))
        except (MotionFileError, ValueError, KeyError, OSError) as exc:
            raise ShardSampleError(f"{where}: .{MOTION_EXT}: {exc}") from exc
        if motion.num_frames != metadata.num_frames:
            raise ShardSampleError(
                f"{where}: motion has {motion.num_frames} frames, the clip has {metadata.num_frames}"
            )
        if not math.isclose(motion.fps, metadata.fps, rel_tol=1e-3):
            raise ShardSampleError(f"{where}: motion fps {motion.fps} differs from the clip fps {metadata.fps}")
    return metadata, (motion if return_motion else None)


# Parquet index ----------------------------------------------------------------------------------------------

INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),       # shard file name, relative to the dataset folder
        pa.field("split", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),     # sample number within its shard
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("sample_bytes", pa.int64(), nullable=False),  # sum of the member sizes
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("num_frames", pa.int64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("has_motion", pa.bool_(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("metadata", pa.string(), nullable=False),    # the sample's full `{key}.json`
    ],
    metadata={"humove.shard_schema_version": str(SHARD_SCHEMA_VERSION)},
)


def index_row(metadata: SampleMetadata, shard: str, position: int, sample_bytes: int) -> dict:
    return {
        "key": metadata.key, "shard": shard, "split": metadata.split, "position": position,
        "video_id": metadata.video_id, "sample_bytes": sample_bytes, "fps": metadata.fps,
        "num_frames": metadata.num_frames, "width": metadata.width, "height": metadata.height,
        "duration_s": metadata.duration_s, "has_motion": metadata.has_motion, "caption": metadata.caption,
        "metadata": metadata.to_json_bytes().decode(),
    }


def index_to_bytes(rows: list[dict]) -> bytes:
    """Parquet bytes of the index (rows in shard order); the same rows give the same bytes."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), buffer)
    return buffer.getvalue()


def read_index(source) -> pa.Table:
    """Read and check an index (path, file object or bytes)."""
    table = pq.read_table(io.BytesIO(source) if isinstance(source, bytes | bytearray) else source)
    meta = table.schema.metadata or {}
    version = meta.get(b"humove.shard_schema_version")
    if version is None or int(version) != SHARD_SCHEMA_VERSION:
        raise ShardSampleError(f"index: shard schema version {version!r}, expected {SHARD_SCHEMA_VERSION}")
    missing = [name for name in INDEX_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ShardSampleError(f"index: missing columns {missing}")
    return table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)


# dataset.json -----------------------------------------------------------------------------------------------

class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    split: Literal["train", "val"]
    samples: int
    bytes: int
    sha256: str


class SplitCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: int = 0
    videos: int = 0
    shards: int = 0
    bytes: int = 0
    with_motion: int = 0


class MotionStat(BaseModel):
    """Per-element mean and standard deviation of one motion key over valid frames; nested lists of `shape`."""

    model_config = ConfigDict(extra="forbid")

    shape: list[int]
    mean: Any
    std: Any


class MotionStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    split: str                      # computed on: "train", or "all" when no train clip has motion
    clips: int
    frames: int                     # valid frames counted
    keys: dict[str, MotionStat]


class DatasetManifest(BaseModel):
    """`dataset.json`: written last, so a folder with one describes a complete build."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SHARD_SCHEMA_VERSION
    format: Literal["webdataset"] = "webdataset"
    shard_name_format: str = SHARD_NAME_FORMAT
    sample_members: list[str] = Field(default_factory=lambda: [f"{{key}}.{ext}" for ext in SAMPLE_EXTENSIONS])
    index: str = INDEX_FILE
    total_samples: int
    splits: dict[str, SplitCounts]
    shards: list[ShardInfo]
    motion_stats: MotionStats | None = None

    def to_json_text(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2, allow_nan=False) + "\n"


def read_manifest(text: str | bytes) -> DatasetManifest:
    try:
        return DatasetManifest.model_validate_json(text)
    except ValidationError as exc:
        raise ShardSampleError(f"{MANIFEST_FILE}: {exc}") from exc
