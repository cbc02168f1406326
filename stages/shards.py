"""`shards`: write the kept clips as WebDataset tar shards, with a Parquet index and `dataset.json`.

Output folder (config `output`, default `<run_dir>/dataset`; any `humove.storage.Storage` URL):
`humove-{split}-{index:06d}.tar`, `index.parquet`, `dataset.json` (the sample spec is
`humove.schemas.shard`).

Determinism, so that two builds from the same records give byte-identical files:
- the split of a clip is a hash of its `video_id` (all clips of one video land in one split);
- within a split, samples are ordered by a hash of `clip_id`, which also spreads the clips of one source
  video over the shards (a shard then holds many videos, which helps shuffling during training);
- tar members carry fixed mtime/uid/gid/owner names and are sorted within a sample;
- the metadata leaves out run-specific values (record timestamps, artifact paths inside the run dir).

Each shard is written under a temporary name and published atomically. A rebuild first deletes the old
`dataset.json` and publishes the new one last, so a crash mid-rebuild leaves no manifest describing a mix of
old and new shards.
Shards of a previous build that the new build does not name are deleted after the new set is published.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import tarfile
import uuid
from typing import Any

import numpy as np
from pydantic import Field

from humove.schemas import ingest as ingest_schema
from humove.schemas import shots as shots_schema
from humove.schemas.motion import MotionClip, load_motion
from humove.schemas.records import COMMON_NAMES
from humove.schemas.shard import (
    DEFAULT_OUTPUT_DIR,
    INDEX_FILE,
    MANIFEST_FILE,
    MOTION_EXT,
    SHARD_NAME_FORMAT,
    SHARD_NAME_RE,
    SPLITS,
    DatasetManifest,
    MotionStat,
    MotionStats,
    SampleMetadata,
    ShardInfo,
    ShardSampleError,
    SplitCounts,
    build_metadata,
    encode_sample,
    index_row,
    index_to_bytes,
)
from humove.schemas.shards import SCHEMA
from humove.stage import AggregateStage, Resources, StageConfig
from humove.storage import Storage, open_url
from humove.worker import error_record

# Fixed tar header fields: the same samples give the same bytes on any machine and at any time.
TAR_MTIME = 946_684_800  # 2000-01-01T00:00:00Z
TAR_OWNER = "humove"
TAR_MODE = 0o444
_BLOCK = tarfile.BLOCKSIZE          # 512
_RECORD = tarfile.RECORDSIZE        # 10240: tarfile pads the archive to a multiple of this
_COPY_BUFFER = 4 << 20              # bytes per write: fewer Python-level calls for large clips

# Clip columns that become top-level metadata fields (or are run-specific) rather than `clip` entries.
_LIFTED_CLIP_COLUMNS = {"video_id", "clip_path", "clip_fps", "clip_num_frames", "clip_width", "clip_height"}
# Keys of the joined input row that are not metadata.
_ROW_KEYS = {"clip_id", "video_id", "input_id"}
# Motion keys summarised in dataset.json (the trainer computes its own normalisation too).
MOTION_STAT_KEYS = ("transl", "global_orient", "body_pose", "joints", "betas", "focal")


class ShardsConfig(StageConfig):
    output: str | None = Field(None, description="folder or URL of the dataset; default <run_dir>/dataset")
    max_shard_bytes: int = Field(1_000_000_000, gt=0, description="a shard is cut before it grows past this")
    max_samples_per_shard: int = Field(10_000, gt=0)
    val_fraction: float = Field(0.05, ge=0.0, le=1.0, description="share of source videos in the val split")
    motion_column: str = Field("motion_path", description="input column with the motion file URL")
    caption_column: str = Field("caption", description="input column with the clip caption")


class ShardsStage(AggregateStage):
    name = "shards"
    version = "1"
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

        storage = Storage(self.output_url())
        storage.makedirs(storage.root)
        # Before any shard is overwritten: no dataset.json or index until the new set is complete (written last).
        storage.delete(storage.join(MANIFEST_FILE))
        storage.delete(storage.join(INDEX_FILE))
        records: list[dict] = []
        index_rows: list[dict] = []
        shards: list[ShardInfo] = []
        # Normalisation statistics come from the train split; from all clips only if train has no motion.
        train_motion, all_motion = _MotionStatsAccumulator(), _MotionStatsAccumulator()
        by_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
        for row in inputs:
            by_split[split_of(row["video_id"], self.config.val_fraction)].append(row)

        for split in SPLITS:
            rows = sorted(by_split[split], key=lambda r: _order_key(r["clip_id"]))
            writer = _ShardWriter(storage, split, self.config.max_shard_bytes, self.config.max_samples_per_shard)
            try:
                for row in rows:
                    clip_id, video_id = row["clip_id"], row["video_id"]
                    try:
                        sample, metadata = self._build_sample(row, split)
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
                    shard_name, position, sample_bytes = writer.add(sample)
                    index_rows.append(index_row(metadata, shard_name, position, sample_bytes))
                    if MOTION_EXT in sample:
                        clip_motion = load_motion(sample[MOTION_EXT])
                        all_motion.add(clip_motion)
                        if split == "train":
                            train_motion.add(clip_motion)
                    records.append(self.ok(clip_id, video_id=video_id, shard_name=shard_name,
                                           shard_split=split, sample_bytes=sample_bytes))
                writer.close()
            finally:
                writer.discard()
            shards.extend(writer.shards)

        storage.write_bytes(storage.join(INDEX_FILE), index_to_bytes(index_rows))
        manifest = _manifest(index_rows, shards, train_motion.result("train") or all_motion.result("all"))
        storage.write_text(storage.join(MANIFEST_FILE), manifest.to_json_text())
        _delete_stale(storage, {shard.name for shard in shards})
        return records

    # One sample ------------------------------------------------------------------------------------------
    def _build_sample(self, row: dict, split: str) -> tuple[dict[str, bytes], SampleMetadata]:
        """The sample's members (validated against the spec) and its metadata."""
        clip_url = row.get("clip_path")
        if not clip_url:
            raise _Rejected("missing_clip", "the input row has no clip_path")
        video = _read_url(clip_url)
        expected_sha = row.get("clip_sha256")
        if expected_sha and hashlib.sha256(video).hexdigest() != expected_sha:
            raise _Rejected("clip_hash_mismatch", f"{clip_url} does not match its recorded sha256")
        motion_url = row.get(self.config.motion_column)
        motion = _read_url(motion_url) if motion_url else None
        metadata = self._metadata(row, split, has_motion=motion is not None)
        return encode_sample(metadata, video, motion), metadata

    def _metadata(self, row: dict, split: str, has_motion: bool) -> SampleMetadata:
        fps = _plain(row.get("clip_fps"))
        num_frames = _plain(row.get("clip_num_frames"))
        missing = [name for name in ("clip_fps", "clip_num_frames", "clip_width", "clip_height")
                   if _plain(row.get(name)) is None]
        if missing:
            raise _Rejected("missing_metadata", f"the input row lacks {missing}")
        caption = _plain(row.get(self.config.caption_column))
        ingest_names = set(ingest_schema.SCHEMA.own_names)
        shots_names = set(shots_schema.SCHEMA.own_names)
        source = {name: _scalar(row.get(name)) for name in sorted(ingest_names) if name in row}
        clip = {name: _scalar(row.get(name)) for name in sorted(shots_names - _LIFTED_CLIP_COLUMNS) if name in row}
        scores: dict[str, float] = {}
        extra: dict[str, Any] = {}
        skip = (COMMON_NAMES | ingest_names | shots_names | _ROW_KEYS
                | {self.config.caption_column, self.config.motion_column})
        for name in sorted(set(row) - skip):
            if _is_run_specific(name):
                continue
            value = _plain(row[name])
            if value is None:
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                scores[name] = float(value)
            else:
                extra[name] = value
        return build_metadata(
            key=row["clip_id"], clip_id=row["clip_id"], video_id=row["video_id"], split=split,
            fps=fps, num_frames=num_frames, width=_plain(row["clip_width"]), height=_plain(row["clip_height"]),
            duration_s=num_frames / fps if fps else 0.0, has_motion=has_motion,
            caption=caption if isinstance(caption, str) and caption.strip() else None,
            clip=clip, source=source, scores=scores, extra=extra,
        )


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


def _read_url(url: str) -> bytes:
    with open_url(url, "rb") as handle:
        return handle.read()


def _is_run_specific(name: str) -> bool:
    """Artifact locations inside a run dir: they would make two builds of the same clips differ."""
    return name.endswith(("_path", "_url", "_dir"))


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


def _scalar(value: Any) -> Any:
    value = _plain(value)
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


# Tar writing -----------------------------------------------------------------------------------------------

def _member_bytes(size: int) -> int:
    """Bytes one member takes in a tar: a header block plus the data padded to whole blocks."""
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


def _archive_bytes(members_bytes: int) -> int:
    """Size of a finished archive: members, two zero end blocks, padded to a whole record."""
    return -(-(members_bytes + 2 * _BLOCK) // _RECORD) * _RECORD


class _HashingFile:
    """Write-only file wrapper that hashes and counts what tarfile writes through it."""

    def __init__(self, handle):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def tell(self) -> int:
        return self.size


class _ShardWriter:
    """Writes the samples of one split into consecutive shards, cut by size and sample count."""

    def __init__(self, storage: Storage, split: str, max_bytes: int, max_samples: int):
        self.storage = storage
        self.split = split
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.shards: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._file = None
        self._hashing: _HashingFile | None = None
        self._tmp_path: str | None = None
        self._name = ""
        self._count = 0
        self._members_bytes = 0

    def add(self, sample: dict[str, bytes]) -> tuple[str, int, int]:
        """Append a sample; returns (shard name, position in the shard, sample bytes)."""
        members = sorted((name, value) for name, value in sample.items() if not name.startswith("__"))
        cost = sum(_member_bytes(len(value)) for _, value in members)
        if self._tar is not None and (
            self._count >= self.max_samples or _archive_bytes(self._members_bytes + cost) > self.max_bytes
        ):
            self.close()
        if self._tar is None:
            self._open()
        key = sample["__key__"]
        for ext, value in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(value)
            info.mtime = TAR_MTIME
            info.mode = TAR_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = TAR_OWNER
            self._tar.addfile(info, _BytesReader(value))
        position = self._count
        self._count += 1
        self._members_bytes += cost
        return self._name, position, sum(len(value) for _, value in members)

    def _open(self) -> None:
        self._name = SHARD_NAME_FORMAT.format(split=self.split, index=len(self.shards))
        if self.storage.local:
            # Temp file next to the target, so publishing is a rename on the same file system.
            self._tmp_path = self.storage.join(f".{self._name}.tmp-{uuid.uuid4().hex[:8]}")
        else:
            self._tmp_path = os.path.join(_scratch_dir(), f"{self._name}.tmp-{uuid.uuid4().hex[:8]}")
        self._file = open(self._tmp_path, "wb")  # noqa: SIM115 - closed in close()/discard()
        self._hashing = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.USTAR_FORMAT,
                                 copybufsize=_COPY_BUFFER)
        self._count = 0
        self._members_bytes = 0

    def close(self) -> None:
        """Finish the current shard and publish it under its final name."""
        if self._tar is None:
            return
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        url = self.storage.join(self._name)
        if self.storage.local:
            self.storage.move(self._tmp_path, url)
        else:
            self.storage.put_file(self._tmp_path, url)
            os.remove(self._tmp_path)
        self.shards.append(ShardInfo(name=self._name, split=self.split, samples=self._count,
                                     bytes=self._hashing.size, sha256=self._hashing.digest.hexdigest()))
        self._tar = self._file = self._hashing = self._tmp_path = None

    def discard(self) -> None:
        """Drop an unfinished shard after a failure (no-op once closed)."""
        if self._file is not None:
            self._file.close()
        if self._tmp_path and os.path.exists(self._tmp_path):
            os.remove(self._tmp_path)
        self._tar = self._file = self._hashing = self._tmp_path = None


class _BytesReader:
    """Minimal file object over bytes for tarfile.addfile (avoids copying into a BytesIO)."""

    def __init__(self, data: bytes):
        self._view = memoryview(data)
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._offset + size)
        chunk = self._view[self._offset:end]
        self._offset = end
        return chunk


def _scratch_dir() -> str:
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "humove-shards")
    os.makedirs(path, exist_ok=True)
    return path


def _delete_stale(storage: Storage, keep: set[str]) -> None:
    """Remove shards of an earlier build that the new one does not name, and leftover temp files."""
    for url in storage.list(storage.root):
        name = url.rstrip("/").rsplit("/", 1)[-1]
        stale_shard = SHARD_NAME_RE.match(name) is not None and name not in keep
        leftover_tmp = name.startswith(".humove-") and ".tar.tmp-" in name
        if stale_shard or leftover_tmp:
            storage.delete(storage.join(name))


# dataset.json ---------------------------------------------------------------------------------------------

def _manifest(index_rows: list[dict], shards: list[ShardInfo], motion_stats: MotionStats | None) -> DatasetManifest:
    splits = {split: SplitCounts() for split in SPLITS}
    videos: dict[str, set[str]] = {split: set() for split in SPLITS}
    for row in index_rows:
        counts = splits[row["split"]]
        counts.samples += 1
        counts.with_motion += int(row["has_motion"])
        videos[row["split"]].add(row["video_id"])
    for shard in shards:
        splits[shard.split].shards += 1
        splits[shard.split].bytes += shard.bytes
    for split in SPLITS:
        splits[split].videos = len(videos[split])
    return DatasetManifest(total_samples=len(index_rows), splits=splits, shards=shards, motion_stats=motion_stats)


class _MotionStatsAccumulator:
    """Per-element mean and std of motion keys over the valid frames of many clips (float64 sums)."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}
        self.squares: dict[str, np.ndarray] = {}
        self.frames = 0
        self.clips = 0

    def add(self, clip: MotionClip) -> None:
        valid = np.asarray(clip.valid, dtype=bool)
        if not valid.any():
            return
        self.clips += 1
        self.frames += int(valid.sum())
        for key in MOTION_STAT_KEYS:
            values = np.asarray(getattr(clip, key), dtype=np.float64)[valid]
            self.sums[key] = self.sums.get(key, 0.0) + values.sum(axis=0)
            self.squares[key] = self.squares.get(key, 0.0) + np.square(values).sum(axis=0)

    def result(self, split: str) -> MotionStats | None:
        if self.frames == 0:
            return None
        keys = {}
        for key in MOTION_STAT_KEYS:
            mean = self.sums[key] / self.frames
            std = np.sqrt(np.maximum(self.squares[key] / self.frames - np.square(mean), 0.0))
            keys[key] = MotionStat(shape=list(np.shape(mean)), mean=np.asarray(mean).tolist(),
                                   std=np.asarray(std).tolist())
        return MotionStats(split=split, clips=self.clips, frames=self.frames, keys=keys)

