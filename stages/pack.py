"""`pack` (CPU): one clip's dataset sample, built in a worker as the clip arrives and packed as its tar members,
laid end to end, for the `shards` stage to append to a shard as they are. (Named `pack`, not `sample`: a run dir's
`sample/` folder holds the demo model's sample, and `samples/` the demo videos.)

Per clip it reads the clip and its motion file once, hashes both (SHA-256) and checks them against what earlier
stages recorded, builds the sample's fixed metadata (`humove.schemas.shard.SAMPLE_FIELDS`), validates the whole
sample as a reader would (`read_sample`), and writes two artifacts: `<clip_id>.tar`, the sample's tar members
(`humove.dataset.sample_fragment`: fixed headers, members sorted by name, no end-of-archive marker), and
`<clip_id>.stats.npz`, the clip's motion sums for the dataset statistics (`humove.sharding.MotionSums`). Its
record names them with the sample's split and `build_digest`, so that `shards` reads no clip and no motion file.
Once `shards` has published a sample in a closed shard it deletes the `.tar` (the shard holds the same bytes and
gives them back if the shard is rewritten); the record stays, and the engine counts a clip packed by its record,
so nothing is packed again (`--force pack` makes every fragment again).

Rejections (final): `missing_clip`, `missing_metadata`, `clip_hash_mismatch` (the clip is not the one its record
names), `motion_hash_mismatch`, `invalid_sample` (what a reader would refuse: a motion file of the wrong frame
count, a clip without a frame rate, …). A file that cannot be read is an `error`, retried.

Deterministic: the same rows give the same bytes on any machine. The metadata holds no record timestamp, no
artifact path and no path of the building machine (`source.uri` is the input's URL or its path relative to the
listed folder / manifest). The split of a clip is a hash of its `video_id` (`val_fraction` of the source videos
go to `val`; all clips of a video land in one split). The clip is `humove.clips.current_clip(row)`: the person
stage's trimmed span when there is one; the metadata names both spans: `shot.*` (what the shots stage cut) and
`clip.*` (what the mp4 holds).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from typing import Any

import numpy as np
from pydantic import Field

from humove.clips import SHOTS_CLIP_FIELDS, TRIMMED_CLIP_FIELDS, current_clip
from humove.dataset import sample_fragment
from humove.schemas.pack import SCHEMA
from humove.schemas.shard import (
    METADATA_EXT,
    MOTION_EXT,
    SAMPLE_FIELDS,
    VIDEO_EXT,
    SampleField,
    ShardSampleError,
    build_metadata,
    field_default,
    read_sample,
)
from humove.sharding import MotionSums, build_digest, split_of, sums_to_bytes
from humove.stage import MapStage, Reads, Resources, StageConfig
from humove.storage import is_local, open_url


class PackConfig(StageConfig):
    val_fraction: float = Field(0.05, ge=0.0, le=1.0, description="share of source videos in the val split")
    motion_column: str = Field("motion_path", description="input column with the motion file URL")
    caption_column: str = Field("caption", description="input column with the clip caption")
    stats_window_s: float = Field(80 / 16, gt=0, description="training window for feature_stats, seconds "
                                  "(81 frames at 16 fps)")


class PackStage(MapStage):
    name = "pack"
    version = "1"
    schema = SCHEMA
    Config = PackConfig
    resources = Resources(num_cpus=1, batch_size=4)
    description = "each kept clip's dataset sample (tar members, checked) and motion sums, for the shards"

    config: PackConfig

    @classmethod
    def reads(cls, config: PackConfig) -> Reads:
        """The clip, and where earlier stages made them the motion file, the caption and the sample metadata's
        columns (`SAMPLE_FIELDS`)."""
        motion = config.motion_column
        metadata = {config.caption_column if spec.name == "caption" else spec.column for spec in SAMPLE_FIELDS}
        return Reads(SHOTS_CLIP_FIELDS, if_present=TRIMMED_CLIP_FIELDS | metadata - {None}
                     | {motion, _sha256_column(motion)})

    def process(self, item: dict) -> dict:
        clip_id = item["clip_id"]
        try:
            return self._build(item)
        except _Rejected as rejected:
            return self.reject(clip_id, rejected.reason, detail=rejected.detail)
        except ShardSampleError as exc:
            return self.reject(clip_id, "invalid_sample", detail=str(exc))

    def _build(self, row: dict) -> dict:
        """Read, check and write one sample; raises `_Rejected` / `ShardSampleError` for a sample that cannot be
        built, an OSError for a file that cannot be read."""
        clip_id = row["clip_id"]
        if not row.get("clip_path"):
            raise _Rejected("missing_clip", "the input row has no clip_path")
        try:
            clip = current_clip(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise _Rejected("missing_metadata", f"the input row lacks clip columns: {exc}") from exc
        video = _read_url(clip.path)
        video_sha256 = hashlib.sha256(video).hexdigest()
        if clip.sha256 and video_sha256 != clip.sha256:
            raise _Rejected("clip_hash_mismatch", f"{clip.path} does not match its recorded sha256")
        motion_url = row.get(self.config.motion_column)
        motion = _read_url(motion_url) if motion_url else None
        motion_sha256 = None if motion is None else hashlib.sha256(motion).hexdigest()
        recorded_motion = row.get(_sha256_column(self.config.motion_column))
        if motion is not None and recorded_motion and motion_sha256 != recorded_motion:
            raise _Rejected("motion_hash_mismatch", f"{motion_url} does not match its recorded sha256")

        split = split_of(row["video_id"], self.config.val_fraction)
        fields = self._fields(row, clip, split, has_motion=motion is not None)
        metadata = build_metadata(**_nest({**fields, "clip.bytes": len(video)}))
        sample = {"__key__": metadata.key, METADATA_EXT: metadata.to_json_bytes(), VIDEO_EXT: video}
        if motion is not None:
            sample[MOTION_EXT] = motion
        # `read_sample` checks the sample as a reader does and returns the motion it loaded: parsed once.
        checked = read_sample(sample)
        fragment, sample_bytes = sample_fragment(sample)
        storage = self.context.storage
        sample_url = storage.write_bytes(self.context.artifact_url(clip_id, "tar"), fragment)
        stats_url = None
        if checked.motion is not None:
            sums = MotionSums.of_clip(checked.motion, self.config.stats_window_s)
            stats_url = storage.write_bytes(self.context.artifact_url(clip_id, "stats.npz"), sums_to_bytes(sums))
        return self.ok(
            clip_id, sample_path=sample_url, sample_fragment_bytes=len(fragment),
            sample_bytes=sample_bytes,
            sample_split=split, sample_val_fraction=self.config.val_fraction,
            sample_build_digest=build_digest(fields, video_sha256, motion_sha256, self.config.stats_window_s),
            sample_clip_sha256=video_sha256, sample_has_motion=motion is not None, sample_stats_path=stats_url)

    def _fields(self, row: dict, clip, split: str, has_motion: bool) -> dict[str, Any]:
        """The fixed metadata of `SAMPLE_FIELDS` by dotted name, `clip.bytes` left None: declared columns from
        the row, the rest from the clip."""
        if not (clip.fps > 0 and clip.num_frames >= 1 and clip.width >= 1 and clip.height >= 1):
            raise ShardSampleError(f"sample {row['clip_id']!r}: the clip has fps {clip.fps}, {clip.num_frames} "
                                   f"frames, size {clip.width}×{clip.height}: needs fps > 0, frames and a size")
        values: dict[str, Any] = {
            "key": row["clip_id"], "clip_id": row["clip_id"], "video_id": row["video_id"], "split": split,
            "fps": clip.fps, "num_frames": clip.num_frames, "width": clip.width, "height": clip.height,
            "duration_s": clip.num_frames / clip.fps, "has_video": True, "has_motion": has_motion,
            # The two spans (humove.schemas.shard): the shot the shots stage cut, and the clip in the mp4.
            "shot.source_start_s": clip.shot_start_s, "shot.source_end_s": clip.shot_end_s,
            "shot.num_frames": clip.shot_num_frames,
            "clip.source_start_frame": clip.source_start_frame, "clip.source_end_frame": clip.source_end_frame,
            "clip.source_start_s": clip.start_s, "clip.source_end_s": clip.end_s,
            "clip.shot_start_frame": clip.span_start_frame, "clip.shot_end_frame": clip.span_end_frame,
            "clip.sha256": clip.sha256, "clip.bytes": None,  # the file's size, set once it is read
        }
        missing = []
        for spec in SAMPLE_FIELDS:
            if spec.name in values or spec.column is None:
                continue
            column = self.config.caption_column if spec.name == "caption" else spec.column
            value = _typed(spec, row.get(column))
            if value is None and not spec.nullable and spec.type != "string":
                missing.append(column)
            values[spec.name] = field_default(spec) if value is None else value
        if missing:
            raise _Rejected("missing_metadata", f"the input row lacks {missing}")
        return values


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _sha256_column(path_column: str) -> str:
    """The column with the recorded sha256 of the file a column names: `motion_path` → `motion_sha256`."""
    return path_column.removesuffix("_path") + "_sha256"


def _read_url(url: str) -> bytes:
    """All bytes of a file (local paths and `file://` URLs with a plain `open`, others through fsspec)."""
    if is_local(url):
        with open(url.removeprefix("file://"), "rb") as handle:
            return handle.read()
    with open_url(url, "rb") as handle:
        return handle.read()


def _typed(spec: SampleField, value: Any) -> Any:
    """A row value as the field's JSON type; None when absent (NaN and inf count as absent)."""
    value = _plain(value)
    if value is None:
        return None
    if spec.type == "string":
        return value if isinstance(value, str) else str(value)
    if spec.type == "bool":
        return bool(value)
    if spec.type == "int64":
        return int(value)
    return float(value)


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    """{"clip.start_s": 1.0} → {"clip": {"start_s": 1.0}}."""
    nested: dict[str, Any] = {}
    for name, value in values.items():
        group, _, leaf = name.rpartition(".")
        (nested.setdefault(group, {}) if group else nested)[leaf] = value
    return nested


def _plain(value: Any) -> Any:
    """A JSON-able Python value: numpy scalars unwrapped, NaN/inf as None, arrays as lists."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return None
    return value
