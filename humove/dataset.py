"""Publishing a dataset folder whole: reproducible WebDataset tars, staging, and `dataset.json` written last.

Both producers (the `shards` stage and `humove ingest-motion`) write through `DatasetBuilder`, so their shards
have the same tar headers and their `dataset.json` the same schema (`humove.schemas.shard.DatasetManifest`).

While building, everything goes to `<dataset>/.staging-<id>/`: the shards (each hashed while written), the
Parquet index and the wids descriptors. Only when all of it is complete are the files moved into place and
`dataset.json` (naming every shard with its size and sha256) written, last and atomically. A failure before that
(a full disk while the val tar is written) leaves the folder as it was: the previous complete dataset, or
nothing a reader accepts. Readers go by `dataset.json` (`humove.schemas.shard.read_dataset` / `list_shards`).

Tar members carry fixed mtime/uid/gid/owner names/mode, so the same samples give the same bytes anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from typing import Any

from humove.schemas.shard import (
    INDEX_FILE,
    MANIFEST_FILE,
    SHARD_NAME_FORMAT,
    SHARD_NAME_RE,
    SPLIT_RE,
    WIDS_FILE_FORMAT,
    DatasetManifest,
    SampleMetadata,
    ShardInfo,
    SplitCounts,
    index_row,
    index_to_bytes,
)
from humove.storage import Storage

# Fixed tar header fields: the same samples give the same bytes on any machine and at any time.
TAR_MTIME = 946_684_800  # 2000-01-01T00:00:00Z
TAR_OWNER = "humove"
TAR_MODE = 0o444
_BLOCK = tarfile.BLOCKSIZE          # 512
_RECORD = tarfile.RECORDSIZE        # 10240: tarfile pads the archive to a multiple of this
_COPY_BUFFER = 4 << 20              # bytes per write: fewer Python-level calls for large clips
STAGING_PREFIX = ".staging-"


def member_bytes(size: int) -> int:
    """Bytes one member takes in a tar: a header block plus the data padded to whole blocks."""
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


def archive_bytes(members_bytes: int) -> int:
    """Size of a finished archive: members, two zero end blocks, padded to a whole record."""
    return -(-(members_bytes + 2 * _BLOCK) // _RECORD) * _RECORD


def tar_member(name: str, size: int) -> tarfile.TarInfo:
    """A member header with the fixed, machine-independent fields."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = TAR_MTIME
    info.mode = TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = TAR_OWNER
    return info


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


class ShardWriter:
    """Writes the samples of one split into consecutive shards in a staging folder, cut by size and count."""

    def __init__(self, staging: Storage, split: str, max_bytes: int, max_samples: int):
        self.staging = staging
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
        """Append a sample ({"__key__", ext: bytes}); returns (shard name, position in the shard, sample bytes)."""
        members = sorted((name, value) for name, value in sample.items() if not name.startswith("__"))
        cost = sum(member_bytes(len(value)) for _, value in members)
        if self._tar is not None and (
            self._count >= self.max_samples or archive_bytes(self._members_bytes + cost) > self.max_bytes
        ):
            self.close()
        if self._tar is None:
            self._open()
        key = sample["__key__"]
        for ext, value in members:
            self._tar.addfile(tar_member(f"{key}.{ext}", len(value)), _BytesReader(value))
        position = self._count
        self._count += 1
        self._members_bytes += cost
        return self._name, position, sum(len(value) for _, value in members)

    def _open(self) -> None:
        self._name = SHARD_NAME_FORMAT.format(split=self.split, index=len(self.shards))
        if self.staging.local:
            self._tmp_path = self.staging.join(f"{self._name}.part")
        else:  # object stores: build locally, upload the finished shard into the staging prefix
            scratch = os.path.join(tempfile.gettempdir(), "humove-shards")
            os.makedirs(scratch, exist_ok=True)
            self._tmp_path = os.path.join(scratch, f"{self._name}.tmp-{uuid.uuid4().hex[:8]}")
        self._file = open(self._tmp_path, "wb")  # noqa: SIM115 - closed in close()/discard()
        self._hashing = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.USTAR_FORMAT,
                                 copybufsize=_COPY_BUFFER)
        self._count = 0
        self._members_bytes = 0

    def close(self) -> None:
        """Finish the current shard (durable, under its final name inside the staging folder)."""
        if self._tar is None:
            return
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target = self.staging.join(self._name)
        if self.staging.local:
            os.replace(self._tmp_path, target)
        else:
            self.staging.put_file(self._tmp_path, target)
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


class DatasetBuilder:
    """Builds one dataset folder; use as a context manager (a failure discards the staged files):

        with DatasetBuilder(folder) as builder:
            for sample, metadata in ...:
                builder.add(sample, metadata)          # sample = encode_sample(metadata, …)
            manifest = builder.publish(feature_stats=…)
    """

    def __init__(self, output: str, max_shard_bytes: int = 1_000_000_000, max_samples_per_shard: int = 10_000):
        self.storage = Storage(output)
        self.max_shard_bytes = max_shard_bytes
        self.max_samples_per_shard = max_samples_per_shard
        self.staging = Storage(self.storage.join(f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"))
        self._writers: dict[str, ShardWriter] = {}
        self._index_rows: list[dict] = []
        self._published = False

    def __enter__(self) -> DatasetBuilder:
        self.staging.makedirs(self.staging.root)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._published:
            self.discard()

    def add(self, sample: dict[str, bytes], metadata: SampleMetadata) -> tuple[str, int, int]:
        """Append a validated sample to its split's current shard; returns (shard, position, sample bytes)."""
        split = metadata.split
        if not SPLIT_RE.match(split):
            raise ValueError(f"split {split!r} must match {SPLIT_RE.pattern}")
        writer = self._writers.get(split)
        if writer is None:
            writer = self._writers[split] = ShardWriter(self.staging, split, self.max_shard_bytes,
                                                        self.max_samples_per_shard)
        shard, position, sample_bytes = writer.add(sample)
        self._index_rows.append(index_row(metadata, shard, position, sample_bytes))
        return shard, position, sample_bytes

    def publish(self, splits: tuple[str, ...] = (), **manifest_fields: Any) -> DatasetManifest:
        """Finish every shard, then put the dataset in place with `dataset.json` last; returns the manifest.
        `splits`: split names listed in the manifest even when empty; `manifest_fields`: `feature_stats`,
        `motion_stats`, `producer`."""
        for writer in self._writers.values():
            writer.close()
        shards = sorted((s for w in self._writers.values() for s in w.shards), key=lambda s: s.name)
        rows = sorted(self._index_rows, key=lambda r: (r["shard"], r["position"]))
        wids = {split: WIDS_FILE_FORMAT.format(split=split) for split in sorted({s.split for s in shards})}
        staged = {INDEX_FILE: index_to_bytes(rows)}
        for split, name in wids.items():
            staged[name] = wids_descriptor(split, [s for s in shards if s.split == split])
        for name, data in staged.items():
            self.staging.write_bytes(self.staging.join(name), data)
        manifest = DatasetManifest(total_samples=len(rows), splits=_split_counts(rows, shards, splits),
                                   shards=shards, wids=wids, **manifest_fields)

        # From here until dataset.json is written the folder is not a dataset (readers get a clear error).
        self.storage.delete(self.storage.join(MANIFEST_FILE))
        for name in [s.name for s in shards] + list(staged):
            self.storage.move(self.staging.join(name), self.storage.join(name))
        self.storage.write_text(self.storage.join(MANIFEST_FILE), manifest.to_json_text())
        self._published = True
        self.staging.delete(self.staging.root, recursive=True)
        remove_stale(self.storage, keep={s.name for s in shards} | set(wids.values()))
        return manifest

    def discard(self) -> None:
        for writer in self._writers.values():
            writer.discard()
        self.staging.delete(self.staging.root, recursive=True)


def wids_descriptor(split: str, shards: list[ShardInfo]) -> bytes:
    """A `wids.ShardListDataset` descriptor of one split; shard URLs relative to the descriptor's folder."""
    descriptor = {"wids_version": 1, "name": f"humove-{split}",
                  "shardlist": [{"url": s.name, "nsamples": s.samples, "filesize": s.bytes} for s in shards]}
    return (json.dumps(descriptor, indent=2, sort_keys=True) + "\n").encode()


def _split_counts(rows: list[dict], shards: list[ShardInfo], splits: tuple[str, ...]) -> dict[str, SplitCounts]:
    names = sorted(set(splits) | {r["split"] for r in rows}, key=lambda s: (s not in splits, s))
    counts = {split: SplitCounts() for split in names}
    videos: dict[str, set[str]] = {split: set() for split in names}
    for row in rows:
        counts[row["split"]].samples += 1
        counts[row["split"]].with_motion += int(row["has_motion"])
        videos[row["split"]].add(row["video_id"])
    for shard in shards:
        counts[shard.split].shards += 1
        counts[shard.split].bytes += shard.bytes
    for split in names:
        counts[split].videos = len(videos[split])
    return counts


def remove_stale(storage: Storage, keep: set[str]) -> None:
    """Remove shards and wids descriptors of an earlier build that the new one does not name, staging folders
    of interrupted builds and temp files of the previous writer."""
    for url in storage.list(storage.root):
        name = url.rstrip("/").rsplit("/", 1)[-1]
        stale_shard = SHARD_NAME_RE.match(name) is not None and name not in keep
        stale_wids = name.startswith("wids-") and name.endswith(".json") and name not in keep
        leftover = name.startswith(STAGING_PREFIX) or (name.startswith(".humove-") and ".tar.tmp-" in name)
        if stale_shard or stale_wids or leftover:
            target = storage.join(name)
            if storage.local and os.path.isdir(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                storage.delete(target, recursive=True)
