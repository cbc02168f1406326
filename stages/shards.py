"""`shards`: write the kept clips as WebDataset tar shards, with a Parquet index and `dataset.json`.

Output folder (config `output`, default `<run_dir>/dataset`; any `humove.storage.Storage` URL):
`humove-{split}-{index:06d}.tar`, `index.parquet`, `wids-{split}.json`, `dataset.json` (the sample spec is
`humove.schemas.shard`). The folder is published whole by `humove.dataset.DatasetBuilder`: everything is staged,
`dataset.json` is written last, and a failure leaves the previous complete dataset in place.

Determinism, so that two builds from the same records give byte-identical files:
- the split of a clip is a hash of its `video_id` (all clips of one video land in one split);
- within a split, samples are ordered by a hash of `clip_id`, which also spreads the clips of one source
  video over the shards (a shard then holds many videos, which helps shuffling during training);
- tar members carry fixed mtime/uid/gid/owner names and are sorted within a sample;
- the metadata is the fixed table `SAMPLE_FIELDS`: no record timestamps, no artifact paths, and no path of the
  building machine (`source.uri` is the input's URL or its path relative to the listed folder / manifest).

The clip of a sample is `humove.clips.current_clip(row)`: the person stage's trimmed span when there is one.
Its metadata names both spans: `shot.*` (what the shots stage cut) and `clip.*` (what the mp4 holds).

Throughput (`python -m bench.bench_shards`): every clip is read once, on a reader thread that hashes it for the
`clip_sha256` check while the main thread checks the sample and its motion file; the shard writer thread
hashes (BLAKE3) and writes the same bytes without copying them (`humove.dataset`). The clip's SHA-256 is the
largest part of the stage's CPU and the reader thread its critical path; the motion statistics are computed a
few thousand frames at a time (`_DatasetStatistics`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import math
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from pydantic import Field

from humove.clips import current_clip
from humove.dataset import DatasetBuilder
from humove.motion.representation import FeatureMoments, windowed_features
from humove.schemas.motion import MotionClip
from humove.schemas.shard import (
    DEFAULT_OUTPUT_DIR,
    METADATA_EXT,
    MOTION_EXT,
    SAMPLE_FIELDS,
    SPLITS,
    VIDEO_EXT,
    MotionStat,
    MotionStats,
    SampleField,
    SampleMetadata,
    ShardSampleError,
    build_metadata,
    field_default,
    read_sample,
)
from humove.schemas.shards import SCHEMA
from humove.stage import AggregateStage, Resources, StageConfig
from humove.storage import Storage, is_local, open_url
from humove.worker import error_record

log = logging.getLogger(__name__)

# Motion keys summarised in dataset.json (the trainer computes its own normalisation too).
MOTION_STAT_KEYS = ("transl", "global_orient", "body_pose", "joints", "betas", "focal")
_READ_AHEAD = 4  # rows whose files are read and hashed ahead of the one being written
_STATS_FRAMES = 2048  # motion frames whose statistics are computed together


class ShardsConfig(StageConfig):
    output: str | None = Field(None, description="folder or URL of the dataset; default <run_dir>/dataset")
    max_shard_bytes: int = Field(1_000_000_000, gt=0, description="a shard is cut before it grows past this")
    max_samples_per_shard: int = Field(10_000, gt=0)
    val_fraction: float = Field(0.05, ge=0.0, le=1.0, description="share of source videos in the val split")
    motion_column: str = Field("motion_path", description="input column with the motion file URL")
    caption_column: str = Field("caption", description="input column with the clip caption")
    stats_window_s: float = Field(80 / 16, gt=0, description="training window for feature_stats, seconds "
                                  "(81 frames at 16 fps)")


class ShardsStage(AggregateStage):
    name = "shards"
    version = "3"  # 3: sample schema 3 (the shot and the clip as two spans)
    schema = SCHEMA
    Config = ShardsConfig
    resources = Resources(num_cpus=1, batch_size=1)
    description = "WebDataset shards, Parquet index and dataset.json from the kept clips"

    config: ShardsConfig

    def output_url(self) -> str:
        return self.config.output or Storage(self.context.run_dir).join(DEFAULT_OUTPUT_DIR)

    def run(self, inputs: list[dict]) -> list[dict]:
        """Write the dataset from all kept clips (joined upstream rows); one record per clip."""
        seen: set[str] = set()
        for row in inputs:
            clip_id = row.get("clip_id")
            if not clip_id:
                raise ValueError(f"shards: input row without clip_id (input_id={row.get('input_id')!r})")
            if clip_id in seen:
                raise ValueError(f"shards: clip {clip_id!r} appears twice in the inputs")
            seen.add(clip_id)

        records: list[dict] = []
        statistics = _DatasetStatistics(self.config.stats_window_s)
        by_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
        for row in inputs:
            by_split[split_of(row["video_id"], self.config.val_fraction)].append(row)

        ordered = [(split, row) for split in SPLITS
                   for row in sorted(by_split[split], key=lambda r: _order_key(r["clip_id"]))]
        with _naming_unnamed_os_errors(self.output_url()), DatasetBuilder(
                self.output_url(), self.config.max_shard_bytes, self.config.max_samples_per_shard) as builder, \
                ThreadPoolExecutor(1) as reader:
            for split, row, files in self._prefetched(ordered, reader):
                clip_id, video_id = row["clip_id"], row["video_id"]
                try:
                    sample, metadata, clip_motion = self._build_sample(row, split, files)
                except _Rejected as rejected:
                    records.append(self.reject(clip_id, rejected.reason, detail=rejected.detail,
                                               video_id=video_id))
                    continue
                except ShardSampleError as exc:
                    records.append(self.reject(clip_id, "invalid_sample", detail=str(exc), video_id=video_id))
                    continue
                except Exception as exc:  # noqa: BLE001 - one unreadable clip must not fail the dataset
                    records.append({**error_record(self, clip_id, exc), "video_id": video_id})
                    continue
                shard_name, _, sample_bytes = builder.add(sample, metadata)
                if clip_motion is not None:
                    statistics.add(clip_motion, train=split == "train")
                records.append(self.ok(clip_id, video_id=video_id, shard_name=shard_name,
                                       shard_split=split, sample_bytes=sample_bytes))
            builder.publish(splits=SPLITS, **statistics.manifest_fields())
        self._warn_of_empty_splits(records, len({row["video_id"] for row in inputs}))
        return records

    def _warn_of_empty_splits(self, records: list[dict], videos: int) -> None:
        """A split that `val_fraction` asks for but that holds no sample (few source videos: a video's clips all
        go to one split) is worth a word, not an error."""
        written = {split: sum(r["status"] == "ok" and r.get("shard_split") == split for r in records)
                   for split in SPLITS}
        wanted = {"train": self.config.val_fraction < 1, "val": self.config.val_fraction > 0}
        for split in SPLITS:
            if wanted[split] and not written[split] and any(written.values()):
                log.warning(f"shards: the {split} split came out empty (val_fraction {self.config.val_fraction} of "
                            f"{videos} source videos; all clips of a video go to one split)")

    # Reading ahead ---------------------------------------------------------------------------------------
    def _prefetched(self, ordered: Iterable[tuple[str, dict]],
                    reader: ThreadPoolExecutor) -> Iterator[tuple[str, dict, Future | None]]:
        """(split, row, future of `_read_files(row)`), the files of the next `_READ_AHEAD` rows being read and
        hashed on `reader` while this thread checks and writes the current one (reads and hashing release the
        GIL). A failed read is raised by the future's `result()`, inside the row's own error handling."""
        window: deque = deque()
        for split, row in ordered:
            window.append((split, row, reader.submit(self._read_files, row) if row.get("clip_path") else None))
            if len(window) > _READ_AHEAD:
                yield window.popleft()
        yield from window

    def _read_files(self, row: dict) -> tuple[bytes, str, bytes | None]:
        """(clip bytes, their sha256 hex digest ("" when the row records none to check), motion file bytes or
        None): each file read once."""
        clip = current_clip(row)
        video = _read_url(clip.path)
        digest = hashlib.sha256(video).hexdigest() if clip.sha256 else ""
        motion_url = row.get(self.config.motion_column)
        return video, digest, (_read_url(motion_url) if motion_url else None)

    # One sample ------------------------------------------------------------------------------------------
    def _build_sample(self, row: dict, split: str,
                      files: Future | None) -> tuple[dict[str, bytes], SampleMetadata, MotionClip | None]:
        """The sample's members (validated against the spec), its metadata and its motion (None without).
        `files`: the future of `_read_files(row)` (None when the row has no clip_path)."""
        if not row.get("clip_path") or files is None:
            raise _Rejected("missing_clip", "the input row has no clip_path")
        try:
            clip = current_clip(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise _Rejected("missing_metadata", f"the input row lacks clip columns: {exc}") from exc
        video, digest, motion = files.result()
        if clip.sha256 and digest != clip.sha256:
            raise _Rejected("clip_hash_mismatch", f"{clip.path} does not match its recorded sha256")
        metadata = self._metadata(row, clip, split, has_motion=motion is not None, video_bytes=len(video))
        sample = {"__key__": metadata.key, METADATA_EXT: metadata.to_json_bytes(), VIDEO_EXT: video}
        if motion is not None:
            sample[MOTION_EXT] = motion
        # `read_sample` checks the sample as `encode_sample` does and also returns the motion it loaded: the
        # motion file is parsed once, for the check and for the statistics.
        return sample, metadata, read_sample(sample).motion

    def _metadata(self, row: dict, clip, split: str, has_motion: bool, video_bytes: int) -> SampleMetadata:
        """The fixed metadata of `SAMPLE_FIELDS`: declared columns from the row, the rest from the clip."""
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
            "clip.sha256": clip.sha256, "clip.bytes": video_bytes,
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
        return build_metadata(**_nest(values))


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


def split_of(video_id: str, val_fraction: float) -> str:
    """`val` for a stable `val_fraction` share of source videos, else `train`."""
    return "val" if _unit_hash(f"split:{video_id}") < val_fraction else "train"


def _unit_hash(text: str) -> float:
    """A number in [0, 1) fixed by `text`."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def _order_key(clip_id: str) -> str:
    return hashlib.sha256(f"order:{clip_id}".encode()).hexdigest()


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@contextlib.contextmanager
def _naming_unnamed_os_errors(path: str):
    """An OS error that names no file (the shard writer's write and fsync errors: a full disk) names `path`, so
    the run's one-line error says where: `humove: shards: <path>: No space left on device`."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), path) from exc


def _read_url(url: str) -> bytes:
    """All bytes of a file. Local paths are read with a plain `open`: fsspec's set-up costs about 0.1 ms of
    Python per file, which holds the GIL that the main thread needs."""
    if is_local(url):
        with open(url.removeprefix("file://"), "rb") as handle:
            return handle.read()
    with open_url(url, "rb") as handle:
        return handle.read()


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


class _DatasetStatistics:
    """dataset.json's motion summaries from the motion of every written clip: `motion_stats` (per-element mean and
    std of the `MOTION_STAT_KEYS` over valid frames) and `feature_stats` (the trainer's normalisation: exact
    feature moments over every valid frame, clips cut into training windows of `window_s`), both over the train
    split, or over all clips when train has no motion. Clips are converted about `_STATS_FRAMES` frames at a
    time: one vectorised pass instead of a few dozen small array operations per clip, on arrays that still fit
    in the CPU cache. Each frame is counted once, in its split; "all" merges the splits at the end."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._pending: list[tuple[MotionClip, bool]] = []
        self._pending_frames = 0
        self._moments = {"train": FeatureMoments(), "val": FeatureMoments()}
        self._sums: dict[str, dict[str, np.ndarray]] = {"train": {}, "val": {}}
        self._squares: dict[str, dict[str, np.ndarray]] = {"train": {}, "val": {}}
        self._clips = {"train": 0, "val": 0}

    def add(self, clip: MotionClip, train: bool) -> None:
        self._pending.append((clip, train))
        self._pending_frames += clip.num_frames
        if self._pending_frames >= _STATS_FRAMES:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        clips = [clip for clip, _ in self._pending]
        train = np.array([train for _, train in self._pending])  # (clips,)
        seen = np.array([clip.valid.any() for clip in clips])  # (clips,): has a valid frame
        in_train = np.repeat(train, [clip.num_frames for clip in clips])  # (ΣF,)
        # The clips come from `read_sample`, which validated them.
        features, valid = windowed_features(clips, self.window_s, validated=True)  # (ΣF, 235), (ΣF,)
        values = {key: np.concatenate([getattr(clip, key) for clip in clips]).astype(np.float64, copy=False)
                  for key in MOTION_STAT_KEYS}
        for split, in_split, clips_in_split in (("train", in_train, train), ("val", ~in_train, ~train)):
            frames = valid & in_split
            if not frames.any():
                continue
            every_frame = frames.all()
            self._clips[split] += int((seen & clips_in_split).sum())
            self._moments[split] = self._moments[split].merge(FeatureMoments.of(features, frames))
            for key, array in values.items():
                chosen = array if every_frame else array[frames]
                self._sums[split][key] = self._sums[split].get(key, 0.0) + chosen.sum(axis=0)
                # Squared in place: `chosen` is a copy, or `array` itself when no other split has frames here.
                self._squares[split][key] = (self._squares[split].get(key, 0.0)
                                             + np.square(chosen, out=chosen).sum(axis=0))
        self._pending, self._pending_frames = [], 0

    def manifest_fields(self) -> dict[str, Any]:
        """`motion_stats` and `feature_stats` for `DatasetBuilder.publish` (None without any valid frame)."""
        self._flush()
        if not self._moments["train"].count:  # no train motion: every split
            self._moments["all"] = self._moments["train"].merge(self._moments["val"])
            self._clips["all"] = self._clips["train"] + self._clips["val"]
            for totals in (self._sums, self._squares):
                totals["all"] = {key: totals["train"].get(key, 0.0) + totals["val"].get(key, 0.0)
                                 for key in MOTION_STAT_KEYS}
        split = "train" if self._moments["train"].count else "all"
        moments = self._moments[split]
        return {"motion_stats": self._motion_stats(split) if moments.count else None,
                "feature_stats": moments.to_stats().to_dict() if moments.count else None}

    def _motion_stats(self, split: str) -> MotionStats:
        frames = self._moments[split].count
        keys = {}
        for key in MOTION_STAT_KEYS:
            mean = self._sums[split][key] / frames
            std = np.sqrt(np.maximum(self._squares[split][key] / frames - np.square(mean), 0.0))
            keys[key] = MotionStat(shape=list(np.shape(mean)), mean=np.asarray(mean).tolist(),
                                   std=np.asarray(std).tolist())
        return MotionStats(split=split, clips=self._clips[split], frames=frames, keys=keys)
