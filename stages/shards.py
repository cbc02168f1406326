"""`shards`: write the kept clips as WebDataset tar shards, with a Parquet index and `dataset.json`.

Output folder (config `output`, default `<run_dir>/dataset`; any `humove.storage.Storage` URL):
`humove-{split}-{index:06d}.tar`, `index.parquet`, `wids-{split}.json`, `dataset.json` (the sample spec is
`humove.schemas.shard`). The folder is published whole by `humove.dataset.DatasetBuilder`: everything is staged,
`dataset.json` is written last, and a failure leaves the previous complete dataset in place.

Incremental: a re-run never rewrites a finished shard for a new clip. Each split's shards fill in order; the
last one, while it has fewer than `max_samples_per_shard` samples, is the split's open shard. New clips (and ones
that failed before) are appended to the open shard, which is rewritten (staged, then replaced) with its old samples
first, and then to new shards numbered after it. A published sample is kept as long as its clip is still an input
and its `build_digest` (index.parquet: the sample's metadata fields and the clip's and motion file's sha256) is
unchanged; a clip that left the inputs or changed rewrites its split from the shard that held it on (the samples
after it keep their order, the changed one goes to the end). A re-run with nothing new writes nothing. Settings
that shape the shards (`val_fraction`, the shard bounds, `stats_window_s`, this stage's version) are recorded in
dataset.json's `producer`; a change rebuilds every shard, as does a dataset that does not read back whole (said
in a warning). dataset.json's statistics are merged from each shard's motion sums (`shard-stats.parquet`), so
finished shards are not read again either.

Determinism, so that two builds from the same records give byte-identical files:
- the split of a clip is a hash of its `video_id` (all clips of one video land in one split);
- within a split, new samples are appended in the order of a hash of `clip_id`, which also spreads the clips of
  one source video over the shards (a shard then holds many videos, which helps shuffling during training);
- tar members carry fixed mtime/uid/gid/owner names and are sorted within a sample;
- the metadata is the fixed table `SAMPLE_FIELDS`: no record timestamps, no artifact paths, and no path of the
  building machine (`source.uri` is the input's URL or its path relative to the listed folder / manifest);
- the statistics are merged shard by shard in shard order.
An incremental build depends on the order the clips came in: two run dirs fed the same runs give the same bytes.

The clip of a sample is `humove.clips.current_clip(row)`: the person stage's trimmed span when there is one.
Its metadata names both spans: `shot.*` (what the shots stage cut) and `clip.*` (what the mp4 holds).

Throughput (`python -m bench.bench_shards`): every clip is read once, on a reader thread that hashes it for the
`clip_sha256` check while the main thread checks the sample and its motion file; the shard writer thread
hashes (BLAKE3) and writes the same bytes without copying them (`humove.dataset`). The clip's SHA-256 is the
largest part of the stage's CPU and the reader thread its critical path; the motion statistics are computed a
few thousand frames at a time (`_MotionSums`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import math
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from humove.clips import SHOTS_CLIP_FIELDS, TRIMMED_CLIP_FIELDS, current_clip
from humove.dataset import DatasetBuilder, remove_stale
from humove.motion.representation import FeatureMoments, windowed_features
from humove.schemas.motion import NUM_BETAS, NUM_BODY_JOINTS, NUM_JOINTS, MotionClip
from humove.schemas.shard import (
    DEFAULT_OUTPUT_DIR,
    INDEX_FILE,
    INDEX_SCHEMA,
    MANIFEST_FILE,
    METADATA_EXT,
    MOTION_EXT,
    SAMPLE_FIELDS,
    SHARD_NAME_RE,
    SPLITS,
    VIDEO_EXT,
    DatasetError,
    DatasetManifest,
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
from humove.stage import AggregateStage, Reads, Resources, StageConfig
from humove.storage import Storage, is_local, open_url
from humove.worker import error_record

log = logging.getLogger(__name__)

# Motion keys summarised in dataset.json (the trainer computes its own normalisation too).
MOTION_STAT_KEYS = ("transl", "global_orient", "body_pose", "joints", "betas", "focal")
_READ_AHEAD = 4  # rows whose files are read and hashed ahead of the one being written
_STATS_FRAMES = 2048  # motion frames whose statistics are computed together
SHARD_STATS_FILE = "shard-stats.parquet"  # in the dataset folder: each shard's motion sums (`_MotionSums`)


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
    version = "4"  # 3: sample schema 3 (the shot and the clip as two spans); 4: incremental, build_digest
    schema = SCHEMA
    Config = ShardsConfig
    resources = Resources(num_cpus=1, batch_size=1)
    description = "WebDataset shards, Parquet index and dataset.json from the kept clips"

    config: ShardsConfig

    @classmethod
    def reads(cls, config: ShardsConfig) -> Reads:
        """The clip, and where earlier stages made them the motion file, the caption and the sample metadata's
        columns (`SAMPLE_FIELDS`)."""
        motion = config.motion_column
        metadata = {config.caption_column if spec.name == "caption" else spec.column for spec in SAMPLE_FIELDS}
        return Reads(SHOTS_CLIP_FIELDS, if_present=TRIMMED_CLIP_FIELDS | metadata - {None}
                     | {motion, _sha256_column(motion)})

    def output_url(self) -> str:
        return self.config.output or Storage(self.context.run_dir).join(DEFAULT_OUTPUT_DIR)

    def run(self, inputs: list[dict]) -> list[dict]:
        """Bring the dataset up to date with all kept clips (joined upstream rows); one record per clip."""
        seen: set[str] = set()
        for row in inputs:
            clip_id = row.get("clip_id")
            if not clip_id:
                raise ValueError(f"shards: input row without clip_id (input_id={row.get('input_id')!r})")
            if clip_id in seen:
                raise ValueError(f"shards: clip {clip_id!r} appears twice in the inputs")
            seen.add(clip_id)

        records: list[dict] = []
        with _naming_unnamed_os_errors(self.output_url()), DatasetBuilder(
                self.output_url(), self.config.max_shard_bytes, self.config.max_samples_per_shard) as builder, \
                ThreadPoolExecutor(1) as reader:
            previous = self._previous(builder)
            plan = self._assign(inputs, previous)
            kept_index = previous.index.filter(pc.is_in(previous.index["shard"], pa.array(plan.kept, pa.string())))
            for row in kept_index.select(["key", "video_id", "shard", "split", "sample_bytes"]).to_pylist():
                records.append(self.ok(row["key"], video_id=row["video_id"], shard_name=row["shard"],
                                       shard_split=row["split"], sample_bytes=row["sample_bytes"]))
            if not plan.changed:  # nothing new, nothing gone: the published dataset stays as it is
                remove_stale(builder.storage, keep={s.name for s in previous.manifest.shards}
                             | set(previous.manifest.wids.values()))  # what a killed run left
                return records

            builder.keep([shard for shard in previous.manifest.shards if shard.name in plan.kept], kept_index)
            statistics = {name: previous.statistics[name] for name in plan.kept}
            writing: dict[str, str] = {}  # split → the shard being written
            for split, row, files in self._prefetched(plan.write, reader):
                clip_id, video_id = row["clip_id"], row["video_id"]
                try:
                    sample, metadata, clip_motion, digest = self._build_sample(row, split, files)
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
                shard_name, _, sample_bytes = builder.add(sample, metadata, digest)
                if writing.get(split, shard_name) != shard_name:
                    statistics[writing[split]].flush()  # that shard is finished
                writing[split] = shard_name
                sums = statistics.setdefault(shard_name, _MotionSums(self.config.stats_window_s))
                if clip_motion is not None:
                    sums.add(clip_motion)
                records.append(self.ok(clip_id, video_id=video_id, shard_name=shard_name,
                                       shard_split=split, sample_bytes=sample_bytes))
            builder.publish(splits=SPLITS, extra_files={SHARD_STATS_FILE: _statistics_to_bytes(statistics)},
                            producer=self._producer(), **_manifest_statistics(statistics))
        self._warn_of_empty_splits(records, len({row["video_id"] for row in inputs}))
        return records

    def _producer(self) -> dict[str, Any]:
        """dataset.json's `producer`: the settings that shape the shards; a re-run under others rebuilds them."""
        return {"tool": "humove shards", "version": self.version, "val_fraction": self.config.val_fraction,
                "max_shard_bytes": self.config.max_shard_bytes,
                "max_samples_per_shard": self.config.max_samples_per_shard,
                "stats_window_s": self.config.stats_window_s}

    # The dataset already published ------------------------------------------------------------------------
    def _previous(self, builder: DatasetBuilder) -> _Published:
        """The published dataset this run extends: empty when there is none, or when it was built with other
        settings or does not read back whole (then every shard is rebuilt, said in a warning)."""
        empty = _Published(DatasetManifest(total_samples=0, splits={}, shards=[]), INDEX_SCHEMA.empty_table(), {},
                           found=False)
        if not builder.storage.exists(builder.storage.join(MANIFEST_FILE)):
            return empty
        folder = self.output_url()
        try:
            published = builder.published()
            if published.manifest.producer != self._producer():
                changed = sorted(k for k in set(published.manifest.producer) | set(self._producer())
                                 if published.manifest.producer.get(k) != self._producer().get(k))
                log.warning("shards: %s was built with other settings (%s): rebuilding every shard", folder,
                             ", ".join(changed))
                return empty
            statistics = _statistics_from_bytes(builder.storage.read_bytes(builder.storage.join(SHARD_STATS_FILE)),
                                                self.config.stats_window_s)
            _check_published(published.manifest, published.index, statistics)
        except (DatasetError, ShardSampleError, OSError, ValueError, KeyError) as exc:
            log.warning("shards: the dataset in %s does not read back whole (%s): rebuilding every shard", folder,
                         str(exc).splitlines()[0])
            return empty
        return _Published(published.manifest, published.index, statistics)

    def _assign(self, inputs: list[dict], previous: _Published) -> _Assignment:
        """Which published shards stay as they are, and which rows are written, in order, after them."""
        digests = {row["clip_id"]: self._planned_digest(row) for row in inputs}
        by_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
        for row in inputs:
            by_split[split_of(row["video_id"], self.config.val_fraction)].append(row)
        published = previous.index.select(["key", "shard", "split", "build_digest"]).to_pylist()
        assignment = _Assignment(changed=not previous.found)
        for split in SPLITS:
            rows = {row["clip_id"]: row for row in by_split[split]}
            shards = [shard for shard in previous.manifest.shards if shard.split == split]  # in shard order
            samples: dict[str, list[str]] = {shard.name: [] for shard in shards}
            placed = set()  # published samples whose clip is still an input, unchanged
            for sample in published:  # in shard and position order
                if sample["split"] == split:
                    samples[sample["shard"]].append(sample["key"])
                    if digests.get(sample["key"]) == sample["build_digest"]:
                        placed.add(sample["key"])
            new = sorted((row for key, row in rows.items() if key not in placed),
                         key=lambda r: _order_key(r["clip_id"]))
            intact = [all(key in placed for key in samples[shard.name]) for shard in shards]
            first = intact.index(False) if False in intact else None
            if first is None and new:  # the open shard takes them first, when there is one
                is_open = shards and shards[-1].samples < self.config.max_samples_per_shard
                first = len(shards) - 1 if is_open else len(shards)
            if first is None:
                assignment.kept += [shard.name for shard in shards]
                continue
            assignment.changed = True
            assignment.kept += [shard.name for shard in shards[:first]]
            assignment.write += [(split, rows[key]) for shard in shards[first:] for key in samples[shard.name]
                                 if key in placed]
            assignment.write += [(split, row) for row in new]
        return assignment

    def _planned_digest(self, row: dict) -> str | None:
        """The `build_digest` the row's sample would get (None when it cannot be built), read from the row's
        recorded checksums; a file whose checksum is not recorded is read and hashed."""
        try:
            if not row.get("clip_path"):
                return None
            clip = current_clip(row)
            motion_url = row.get(self.config.motion_column)
            fields = self._fields(row, clip, split_of(row["video_id"], self.config.val_fraction),
                                  has_motion=bool(motion_url))
            motion_sha256 = None
            if motion_url:
                motion_sha256 = row.get(self._motion_sha256_column) or hashlib.sha256(_read_url(motion_url)).hexdigest()
            return _build_digest(fields, clip.sha256 or hashlib.sha256(_read_url(clip.path)).hexdigest(),
                                 motion_sha256)
        except (_Rejected, ShardSampleError, KeyError, TypeError, ValueError, OSError):
            return None  # a row that cannot be built goes to the writing, which records why

    @property
    def _motion_sha256_column(self) -> str:
        return _sha256_column(self.config.motion_column)

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

    def _read_files(self, row: dict) -> tuple[bytes, str, bytes | None, str | None]:
        """(clip bytes, their sha256 hex digest, motion file bytes or None, their sha256 or None): each file
        read once."""
        clip = current_clip(row)
        video = _read_url(clip.path)
        motion_url = row.get(self.config.motion_column)
        motion = _read_url(motion_url) if motion_url else None
        return (video, hashlib.sha256(video).hexdigest(), motion,
                None if motion is None else hashlib.sha256(motion).hexdigest())

    # One sample ------------------------------------------------------------------------------------------
    def _build_sample(self, row: dict, split: str, files: Future | None
                      ) -> tuple[dict[str, bytes], SampleMetadata, MotionClip | None, str]:
        """The sample's members (validated against the spec), its metadata, its motion (None without) and its
        `build_digest`. `files`: the future of `_read_files(row)` (None when the row has no clip_path)."""
        if not row.get("clip_path") or files is None:
            raise _Rejected("missing_clip", "the input row has no clip_path")
        try:
            clip = current_clip(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise _Rejected("missing_metadata", f"the input row lacks clip columns: {exc}") from exc
        video, video_sha256, motion, motion_sha256 = files.result()
        if clip.sha256 and video_sha256 != clip.sha256:
            raise _Rejected("clip_hash_mismatch", f"{clip.path} does not match its recorded sha256")
        recorded_motion = row.get(self._motion_sha256_column)
        if motion is not None and recorded_motion and motion_sha256 != recorded_motion:
            raise _Rejected("motion_hash_mismatch",
                            f"{row[self.config.motion_column]} does not match its recorded sha256")
        fields = self._fields(row, clip, split, has_motion=motion is not None)
        metadata = build_metadata(**_nest({**fields, "clip.bytes": len(video)}))
        sample = {"__key__": metadata.key, METADATA_EXT: metadata.to_json_bytes(), VIDEO_EXT: video}
        if motion is not None:
            sample[MOTION_EXT] = motion
        # `read_sample` checks the sample as `encode_sample` does and also returns the motion it loaded: the
        # motion file is parsed once, for the check and for the statistics.
        return sample, metadata, read_sample(sample).motion, _build_digest(fields, video_sha256, motion_sha256)

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


@dataclass
class _Published:
    """The dataset a run extends: its manifest, index and each shard's motion sums."""

    manifest: DatasetManifest
    index: pa.Table  # INDEX_SCHEMA
    statistics: dict[str, _MotionSums]  # shard name → its sums
    found: bool = True  # False: there is none to extend (or it is rebuilt), so this run publishes one


@dataclass
class _Assignment:
    kept: list[str] = field(default_factory=list)  # published shards that stay as they are
    write: list[tuple[str, dict]] = field(default_factory=list)  # (split, row), in the order they are appended
    changed: bool = False  # some shard is written or goes


def _check_published(manifest: DatasetManifest, index: pa.Table, statistics: dict[str, _MotionSums]) -> None:
    """Raise ValueError unless the index and the motion sums describe exactly the shards of the manifest."""
    names = [shard.name for shard in manifest.shards]
    if pc.count_distinct(index["key"]).as_py() != index.num_rows:
        raise ValueError(f"{INDEX_FILE} names a sample twice")
    if sorted(statistics) != sorted(names):
        raise ValueError(f"{SHARD_STATS_FILE} names other shards than {MANIFEST_FILE}")
    if index.num_rows and index["build_digest"].null_count:
        raise ValueError(f"{INDEX_FILE} has samples without a build_digest")
    counts = dict(zip(*pc.value_counts(index["shard"]).flatten(), strict=True)) if index.num_rows else {}
    counts = {str(name): int(count) for name, count in counts.items()}
    if counts != {shard.name: shard.samples for shard in manifest.shards}:
        raise ValueError(f"{INDEX_FILE} does not hold the samples {MANIFEST_FILE} counts per shard")
    order = index.select(["shard", "position"]).to_pylist()
    if order != sorted(order, key=lambda r: (r["shard"], r["position"])):
        raise ValueError(f"{INDEX_FILE} is not in shard order")


def _build_digest(fields: dict[str, Any], clip_sha256: str, motion_sha256: str | None) -> str:
    """The index's `build_digest`: sha256 of the sample's metadata fields and its files' sha256 (no path)."""
    text = json.dumps({"fields": fields, "clip_sha256": clip_sha256, "motion_sha256": motion_sha256},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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


def _sha256_column(path_column: str) -> str:
    """The column with the recorded sha256 of the file a column names: `motion_path` → `motion_sha256`."""
    return path_column.removesuffix("_path") + "_sha256"


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


# Motion statistics ------------------------------------------------------------------------------------------
# The shape of one frame's value of each of MOTION_STAT_KEYS (shard-stats.parquet stores them flat).
_STAT_SHAPES = {"transl": (3,), "global_orient": (3,), "body_pose": (NUM_BODY_JOINTS * 3,), "joints": (NUM_JOINTS, 3),
                "betas": (NUM_BETAS,), "focal": ()}
_STATS_SCHEMA = pa.schema([
    pa.field("shard", pa.string(), nullable=False),
    pa.field("clips", pa.int64(), nullable=False),           # clips with a valid frame
    pa.field("frames", pa.int64(), nullable=False),          # valid frames
    pa.field("feature_mean", pa.list_(pa.float64())),        # (235,) FeatureMoments; empty without frames
    pa.field("feature_m2", pa.list_(pa.float64())),
    pa.field("sums", pa.list_(pa.float64())),                # Σ over valid frames, MOTION_STAT_KEYS flat in order
    pa.field("squares", pa.list_(pa.float64())),             # Σ of squares, likewise
])


class _MotionSums:
    """The motion statistics of one shard's clips, mergeable: `moments` (the trainer's feature moments, clips cut
    into training windows of `window_s`), and per-element sums and sums of squares of the `MOTION_STAT_KEYS`
    over valid frames. Clips are converted about `_STATS_FRAMES` frames at a time: one vectorised pass instead
    of a few dozen small array operations per clip, on arrays that still fit in the CPU cache."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self.clips = 0
        self.moments = FeatureMoments()
        self.sums: dict[str, np.ndarray] = {}
        self.squares: dict[str, np.ndarray] = {}
        self._pending: list[MotionClip] = []
        self._pending_frames = 0

    def add(self, clip: MotionClip) -> None:
        self._pending.append(clip)
        self._pending_frames += clip.num_frames
        if self._pending_frames >= _STATS_FRAMES:
            self.flush()

    def flush(self) -> None:
        clips, self._pending, self._pending_frames = self._pending, [], 0
        if not clips:
            return
        # The clips come from `read_sample`, which validated them.
        features, valid = windowed_features(clips, self.window_s, validated=True)  # (ΣF, 235), (ΣF,)
        if not valid.any():
            return
        every_frame = valid.all()
        self.clips += sum(bool(clip.valid.any()) for clip in clips)
        self.moments = self.moments.merge(FeatureMoments.of(features, valid))
        for key in MOTION_STAT_KEYS:
            # A fresh float64 array (concatenate copies), squared in place below.
            values = np.concatenate([getattr(clip, key) for clip in clips]).astype(np.float64, copy=False)
            chosen = values if every_frame else values[valid]
            self.sums[key] = self.sums.get(key, 0.0) + chosen.sum(axis=0)
            self.squares[key] = self.squares.get(key, 0.0) + np.square(chosen, out=chosen).sum(axis=0)

    def merge(self, other: _MotionSums) -> _MotionSums:
        self.flush()
        other.flush()
        merged = _MotionSums(self.window_s)
        merged.clips = self.clips + other.clips
        merged.moments = self.moments.merge(other.moments)
        for mine, theirs, total in ((self.sums, other.sums, merged.sums),
                                    (self.squares, other.squares, merged.squares)):
            for key in MOTION_STAT_KEYS:
                if key in mine or key in theirs:
                    total[key] = mine.get(key, 0.0) + theirs.get(key, 0.0)
        return merged

    def to_row(self, shard: str) -> dict[str, Any]:
        self.flush()
        frames = self.moments.count

        def flat(totals: dict[str, np.ndarray]) -> list[float]:
            return np.concatenate([np.ravel(totals[key]) for key in MOTION_STAT_KEYS]).tolist() if frames else []

        return {"shard": shard, "clips": self.clips, "frames": frames,
                "feature_mean": self.moments.mean.tolist() if frames else [],
                "feature_m2": self.moments.m2.tolist() if frames else [],
                "sums": flat(self.sums), "squares": flat(self.squares)}

    @classmethod
    def from_row(cls, row: dict[str, Any], window_s: float) -> _MotionSums:
        sums = cls(window_s)
        sums.clips = int(row["clips"])
        if row["frames"]:
            sums.moments = FeatureMoments(row["frames"], row["feature_mean"], row["feature_m2"])
            for flat, totals in ((row["sums"], sums.sums), (row["squares"], sums.squares)):
                flat, start = np.asarray(flat, dtype=np.float64), 0
                for key in MOTION_STAT_KEYS:
                    size = math.prod(_STAT_SHAPES[key])
                    totals[key] = flat[start:start + size].reshape(_STAT_SHAPES[key])
                    start += size
                if start != len(flat):
                    raise ValueError(f"{SHARD_STATS_FILE}: {row['shard']}: {len(flat)} sums, expected {start}")
        return sums


def _statistics_to_bytes(statistics: dict[str, _MotionSums]) -> bytes:
    """`shard-stats.parquet`: one row per shard, in shard order."""
    rows = [statistics[name].to_row(name) for name in sorted(statistics)]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=_STATS_SCHEMA), buffer)
    return buffer.getvalue()


def _statistics_from_bytes(data: bytes, window_s: float) -> dict[str, _MotionSums]:
    rows = pq.read_table(io.BytesIO(data)).cast(_STATS_SCHEMA).to_pylist()
    return {row["shard"]: _MotionSums.from_row(row, window_s) for row in rows}


def _manifest_statistics(statistics: dict[str, _MotionSums]) -> dict[str, Any]:
    """dataset.json's `motion_stats` (per-element mean and std of the `MOTION_STAT_KEYS` over valid frames) and
    `feature_stats` (the trainer's normalisation: exact feature moments), over the train shards, or over every
    shard when train has no motion; None without any valid frame. Merged shard by shard in shard order."""
    names = sorted(statistics)
    total = _MotionSums(0.0)
    for name in names:
        if SHARD_NAME_RE.match(name).group(1) == "train":
            total = total.merge(statistics[name])
    split = "train"
    if not total.moments.count:
        split, total = "all", _MotionSums(0.0)
        for name in names:
            total = total.merge(statistics[name])
    frames = total.moments.count
    if not frames:
        return {"motion_stats": None, "feature_stats": None}
    keys = {}
    for key in MOTION_STAT_KEYS:
        mean = total.sums[key] / frames
        std = np.sqrt(np.maximum(total.squares[key] / frames - np.square(mean), 0.0))
        keys[key] = MotionStat(shape=list(np.shape(mean)), mean=np.asarray(mean).tolist(),
                               std=np.asarray(std).tolist())
    return {"motion_stats": MotionStats(split=split, clips=total.clips, frames=frames, keys=keys),
            "feature_stats": total.moments.to_stats().to_dict()}
