"""Publishing a dataset folder whole: reproducible WebDataset tars, staging, and `dataset.json` written last.

Both producers (the `shards` stage and `humove ingest-motion`) write through `DatasetBuilder`, so their shards
have the same tar headers and their `dataset.json` the same schema (`humove.schemas.shard.DatasetManifest`).

While building, everything goes to `<dataset>/.staging-<id>/`: the shards (each hashed while written), the
Parquet index and the wids descriptors. Only when all of it is complete are the files moved into place and
`dataset.json` (naming every shard with its size and BLAKE3 checksum) written, last and atomically. A failure
before that (a full disk while the val tar is written) leaves the folder as it was: the previous complete
dataset, or nothing a reader accepts. Readers go by `dataset.json` (`humove.schemas.shard.read_dataset` /
`list_shards`).

A build may start from the dataset already in the folder (`published`, `keep`): the finished shards it keeps stay
in place, untouched, and are named again in the new `dataset.json`; a split's new shards are numbered after them,
and a rewritten shard that comes out byte-identical to the published one is left in place too. A published
shard's samples can be read back as fragments (`published_samples`, checked against `dataset.json`, then
`read_range`), for a rewrite whose samples exist nowhere else.

Tar members carry fixed mtime/uid/gid/owner names/mode, so the same samples give the same bytes anywhere. A
sample laid out as its tar members once (`sample_fragment`: the `pack` stage does it in a worker) is appended to
a shard as those bytes (`DatasetBuilder.add_fragment`): a shard is its samples' fragments end to end, then the
end-of-archive blocks.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import queue
import shutil
import tarfile
import tempfile
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from blake3 import blake3

from humove.schemas.shard import (
    INDEX_FILE,
    INDEX_SCHEMA,
    MANIFEST_FILE,
    SHARD_NAME_FORMAT,
    SHARD_NAME_RE,
    SPLIT_RE,
    WIDS_FILE_FORMAT,
    DatasetError,
    DatasetManifest,
    SampleMetadata,
    ShardInfo,
    ShardSampleError,
    SplitCounts,
    index_row,
    index_to_bytes,
    read_dataset,
    read_index,
)
from humove.storage import Storage, libc_function

# Fixed tar header fields: the same samples give the same bytes on any machine and at any time.
TAR_MTIME = 946_684_800  # 2000-01-01T00:00:00Z
TAR_OWNER = "humove"
TAR_MODE = 0o444
_BLOCK = tarfile.BLOCKSIZE          # 512
_RECORD = tarfile.RECORDSIZE        # 10240: tarfile pads the archive to a multiple of this
_QUEUE_SAMPLES = 4                  # samples a shard's writer thread may hold queued
_PASS_THROUGH_BYTES = 1 << 20       # member data this large goes to the writer as it is, never copied
_WRITEBACK_BYTES = 8 << 20          # a shard's writer starts writing back to disk every this many bytes
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


def sample_parts(sample: dict[str, bytes]) -> tuple[list, int]:
    """A sample ({"__key__", ext: bytes}) as tar members, members sorted by name: (bytes-like parts that laid end
    to end are the members' blocks, the sum of the member sizes). Each member is a `tar_member` ustar header, the
    data and zero padding to whole blocks, as `tarfile` writes it. Large member data (a clip) is a part of its
    own, never copied; the headers and small members between them are joined, so that a shard's writer thread
    takes the GIL a few times per sample, not once per header, member and padding."""
    members = sorted((name, value) for name, value in sample.items() if not name.startswith("__"))
    key = sample["__key__"]
    parts, pending = [], []
    for ext, value in members:
        pending.append(tar_member(f"{key}.{ext}", len(value)).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING,
                                                                    "surrogateescape"))
        if len(value) >= _PASS_THROUGH_BYTES:  # a clip: not copied
            parts += [b"".join(pending), value]
            pending = []
        else:
            pending.append(value)
        pending.append(bytes(-len(value) % _BLOCK))
    parts.append(b"".join(pending))
    return parts, sum(len(value) for _, value in members)


def sample_fragment(sample: dict[str, bytes]) -> tuple[bytes, int]:
    """A sample's tar members as one byte string (whole blocks, no end-of-archive marker): what a shard holds of
    it, so that shards are made by laying fragments end to end (`DatasetBuilder.add_fragment`); and the sum of
    its member sizes."""
    parts, sample_bytes = sample_parts(sample)
    return b"".join(parts), sample_bytes


def fragment_members(fragment: bytes | memoryview, where: str) -> dict[str, memoryview]:
    """The members of a sample fragment, name → data (views into `fragment`). Raises `ShardSampleError` naming
    `where` unless it is whole ustar members and nothing else."""
    view, members, offset = memoryview(fragment), {}, 0
    while offset < len(view):
        try:
            info = tarfile.TarInfo.frombuf(bytes(view[offset:offset + _BLOCK]), tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError as exc:
            raise ShardSampleError(f"{where}: no tar member header at byte {offset} ({exc})") from exc
        end = offset + member_bytes(info.size)
        if not info.isfile() or end > len(view) or info.name in members:
            raise ShardSampleError(f"{where}: member {info.name!r} at byte {offset} is not a whole file member")
        members[info.name] = view[offset + _BLOCK:offset + _BLOCK + info.size]
        offset = end
    return members


def published_samples(storage: Storage, shard: ShardInfo) -> dict[str, tuple[int, int]]:
    """Where each sample of a published shard lies: key → (byte offset, length) of its tar members laid end to end
    (what `sample_fragment` made of it). The shard is read whole, once, and must have the size and checksum that
    dataset.json records for it: raises `DatasetError` naming the shard otherwise, so that bytes read back by
    these offsets are the bytes that were published. A sample's members lie together; its key is a member name up
    to the first dot (the WebDataset rule)."""
    url = storage.join(shard.name)
    algorithm, expected = shard.checksum()
    digest = blake3() if algorithm == "blake3" else hashlib.sha256()
    samples: dict[str, tuple[int, int]] = {}
    offset, last, ended = 0, None, False
    try:
        with storage.open(url, "rb") as handle:
            while block := handle.read(_BLOCK if not ended else _RECORD):
                digest.update(block)
                start, offset = offset, offset + len(block)
                if ended:
                    continue
                if block == bytes(_BLOCK):  # the end-of-archive blocks: only hashed from here on
                    ended = True
                    continue
                info = tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
                remaining = member_bytes(info.size) - _BLOCK
                while remaining and (data := handle.read(min(remaining, _PASS_THROUGH_BYTES))):
                    digest.update(data)
                    remaining -= len(data)
                    offset += len(data)
                key = info.name.split(".", 1)[0]
                if key != last and key in samples:
                    raise tarfile.HeaderError(f"the members of sample {key!r} do not lie together")
                first = samples[key][0] if key == last else start
                samples[key], last = (first, offset - first), key
    except FileNotFoundError:
        raise DatasetError(f"{url}: missing, {MANIFEST_FILE} names it") from None
    except (tarfile.HeaderError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{url}: not the tar {MANIFEST_FILE} names ({exc})") from exc
    if offset != shard.bytes or digest.hexdigest() != expected:
        raise DatasetError(f"{url}: does not match its size and {algorithm} in {MANIFEST_FILE} (damaged or replaced)")
    return samples


def read_range(storage: Storage, url: str, offset: int, length: int) -> bytes:
    """`length` bytes of a file from `offset` (a sample of a shard, by `published_samples`)."""
    with storage.open(url, "rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    if len(data) != length:
        raise DatasetError(f"{url}: {len(data)} bytes at byte {offset}, expected {length} (it changed while read)")
    return data


_SYNC_FILE_RANGE = libc_function("sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of the range's dirty pages, without waiting


class _TarFileWriter:
    """Appends bytes to a shard file on a background thread, hashing (BLAKE3) and counting them on the way.

    The caller meanwhile reads, hashes and checks the next clips: hashing and file writes release the GIL, so
    the threads overlap. An error on the thread (a full disk) is raised by the caller's next call. BLAKE3, not
    SHA-256: the clips are already SHA-256'd once for their own check, and BLAKE3 hashes a shard about 4x faster
    (122 MB: 21 against 82 ms on one core of the 2-core VM), which is the difference between the stage keeping
    up with `tar` + `sync` or not (`bench.bench_shards`).

    Every `_WRITEBACK_BYTES` the thread asks the kernel to start writing the new bytes to disk (Linux
    `sync_file_range`, a hint that waits for nothing), so that the fsync of `finish` finds little left to write
    instead of the whole shard. Durability still comes from that fsync alone."""

    def __init__(self, path: str):
        self.path = path
        self.digest = blake3()
        self.size = 0
        self._handle = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in finish()/abandon()
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_SAMPLES)
        self._error: BaseException | None = None
        self._written = self._writeback_from = 0
        self._thread = threading.Thread(target=self._run, name=f"shard-writer:{os.path.basename(path)}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (parts := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep draining so that the producer never blocks on a dead writer
            try:
                for part in parts:
                    self.digest.update(part)
                self._write_all(parts)
                if _SYNC_FILE_RANGE is not None and self._written - self._writeback_from >= _WRITEBACK_BYTES:
                    # Failures are ignored here: this is only a hint, and fsync reports any write-back error.
                    _SYNC_FILE_RANGE(self._handle.fileno(), self._writeback_from,
                                     self._written - self._writeback_from, _SYNC_FILE_RANGE_WRITE)
                    self._writeback_from = self._written
            except BaseException as exc:  # noqa: BLE001 - handed to the producer thread
                self._error = exc

    def _write_all(self, parts: list) -> None:
        """Write the parts in order with as few `writev` calls as the kernel allows (no joining copy)."""
        views = [view for part in parts if len(view := memoryview(part).cast("B"))]
        while views:
            written = os.writev(self._handle.fileno(), views)
            self._written += written
            while views and written >= len(views[0]):
                written -= len(views.pop(0))
            if views:
                views[0] = views[0][written:]

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, parts: list) -> None:
        """Queue bytes-like parts to be appended in order; they must not change until written."""
        self._raise_error()
        parts = [part for part in parts if len(part)]
        if parts:
            self.size += sum(memoryview(part).nbytes for part in parts)
            self._queue.put(parts)

    def finish(self) -> None:
        """Wait for every queued byte, then fsync and close the file (durable)."""
        self._queue.put(None)
        self._thread.join()
        self._raise_error()
        os.fsync(self._handle.fileno())
        self._handle.close()

    def abandon(self) -> None:
        """Stop the thread and close the file without syncing (after a failure)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._handle.close()


class ShardWriter:
    """Writes the samples of one split into consecutive shards in a staging folder, cut by size and count.

    Tar members are written directly (a `tarfile` ustar header from `tar_member`, the data, zero padding to
    whole blocks; at the end two zero blocks and padding to a whole record): the same bytes `tarfile` writes,
    without its per-member file-object copy loop. Each sample goes to a `_TarFileWriter` as a few parts
    (`sample_parts`), or as one when it comes as a fragment (`add_fragment`)."""

    def __init__(self, staging: Storage, split: str, max_bytes: int, max_samples: int, first_index: int = 0):
        self.staging = staging
        self.split = split
        self.first_index = first_index  # the number of the first shard it writes
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.shards: list[ShardInfo] = []
        self._file: _TarFileWriter | None = None
        self._tmp_path: str | None = None
        self._name = ""
        self._count = 0
        self._members_bytes = 0

    def add(self, sample: dict[str, bytes]) -> tuple[str, int, int]:
        """Append a sample ({"__key__", ext: bytes}); returns (shard name, position in the shard, sample bytes)."""
        parts, sample_bytes = sample_parts(sample)
        return self._append(parts, sum(memoryview(part).nbytes for part in parts), sample_bytes)

    def add_fragment(self, fragment: bytes, sample_bytes: int) -> tuple[str, int, int]:
        """Append a sample already laid out as tar members (`sample_fragment`); returns what `add` returns."""
        if len(fragment) % _BLOCK:
            raise ValueError(f"a sample fragment is whole {_BLOCK}-byte blocks, not {len(fragment)} bytes")
        return self._append([fragment], len(fragment), sample_bytes)

    def _append(self, parts: list, cost: int, sample_bytes: int) -> tuple[str, int, int]:
        if self._file is not None and (
            self._count >= self.max_samples or archive_bytes(self._members_bytes + cost) > self.max_bytes
        ):
            self.close()
        if self._file is None:
            self._open()
        self._file.write(parts)
        position = self._count
        self._count += 1
        self._members_bytes += cost
        return self._name, position, sample_bytes

    def _open(self) -> None:
        self._name = SHARD_NAME_FORMAT.format(split=self.split, index=self.first_index + len(self.shards))
        if self.staging.local:
            self._tmp_path = self.staging.join(f"{self._name}.part")
        else:  # object stores: build locally, upload the finished shard into the staging prefix
            scratch = os.path.join(tempfile.gettempdir(), "humove-shards")
            os.makedirs(scratch, exist_ok=True)
            self._tmp_path = os.path.join(scratch, f"{self._name}.tmp-{uuid.uuid4().hex[:8]}")
        self._file = _TarFileWriter(self._tmp_path)
        self._count = 0
        self._members_bytes = 0

    def close(self) -> None:
        """Finish the current shard (durable, under its final name inside the staging folder)."""
        if self._file is None:
            return
        # Two zero blocks end the archive, then zeros up to a whole record, as tarfile does.
        self._file.write([bytes(archive_bytes(self._members_bytes) - self._members_bytes)])
        self._file.finish()
        if self._file.size != archive_bytes(self._members_bytes):
            raise RuntimeError(f"{self._name}: wrote {self._file.size} bytes, the tar layout needs "
                               f"{archive_bytes(self._members_bytes)}")
        target = self.staging.join(self._name)
        if self.staging.local:
            os.replace(self._tmp_path, target)
        else:
            self.staging.put_file(self._tmp_path, target)
            os.remove(self._tmp_path)
        self.shards.append(ShardInfo(name=self._name, split=self.split, samples=self._count,
                                     bytes=self._file.size, blake3=self._file.digest.hexdigest()))
        self._file = self._tmp_path = None

    def discard(self) -> None:
        """Drop an unfinished shard after a failure (no-op once closed)."""
        if self._file is not None:
            self._file.abandon()
        if self._tmp_path and os.path.exists(self._tmp_path):
            os.remove(self._tmp_path)
        self._file = self._tmp_path = None


@dataclass(frozen=True)
class PublishedDataset:
    """The complete dataset found in a folder: its `dataset.json` (checked against the files) and its index."""

    manifest: DatasetManifest
    index: pa.Table  # INDEX_SCHEMA


class DatasetBuilder:
    """Builds one dataset folder; use as a context manager (a failure discards the staged files):

        with DatasetBuilder(folder) as builder:
            for sample, metadata in ...:
                builder.add(sample, metadata)          # sample = encode_sample(metadata, …)
                # or, a sample laid out in a worker: fragment, size = sample_fragment(sample), then
                # builder.add_fragment(fragment, metadata, size)
            manifest = builder.publish(feature_stats=…)

    To extend the dataset already there: `builder.keep(shards, index)` with finished shards of
    `builder.published()` before the first `add`; the new samples go to shards numbered after the kept ones.
    """

    def __init__(self, output: str, max_shard_bytes: int = 1_000_000_000, max_samples_per_shard: int = 10_000):
        self.storage = Storage(output)
        self.max_shard_bytes = max_shard_bytes
        self.max_samples_per_shard = max_samples_per_shard
        self.staging = Storage(self.storage.join(f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"))
        self._writers: dict[str, ShardWriter] = {}
        self._index_rows: list[dict] = []
        self._kept_shards: list[ShardInfo] = []
        self._kept_index = INDEX_SCHEMA.empty_table()
        self._previous: PublishedDataset | None = None
        self._published_shards: dict[str, ShardInfo] = {}
        self._published = False

    def __enter__(self) -> DatasetBuilder:
        self.staging.makedirs(self.staging.root)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._published:
            self.discard()

    def published(self) -> PublishedDataset:
        """The complete dataset now in the folder. Raises `DatasetError` (none there, or its dataset.json does not
        match its files) or `ShardSampleError` (an unreadable index)."""
        manifest = read_dataset(self.storage.root)
        with self.storage.open(self.storage.join(manifest.index), "rb") as handle:
            index = read_index(handle)
        self._previous = PublishedDataset(manifest, index)
        self._published_shards = {shard.name: shard for shard in manifest.shards}
        return self._previous

    def keep(self, shards: list[ShardInfo], index: pa.Table) -> None:
        """Carry finished shards of `published()` into this build as they are, with their index rows."""
        if self._writers:
            raise RuntimeError("DatasetBuilder.keep: shards are kept before the first add")
        missing = sorted({shard.name for shard in shards} - set(self._published_shards))
        if missing:
            raise DatasetError(f"{self.storage.root}: cannot keep {missing}: not in the published dataset")
        self._kept_shards += shards
        self._kept_index = pa.concat_tables([self._kept_index, index.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)])

    def add(self, sample: dict[str, bytes], metadata: SampleMetadata,
            build_digest: str | None = None) -> tuple[str, int, int]:
        """Append a validated sample to its split's current shard; returns (shard, position, sample bytes).
        `build_digest`: what the sample was built from (the index's `build_digest`)."""
        shard, position, sample_bytes = self._writer(metadata.split).add(sample)
        self._index_rows.append(index_row(metadata, shard, position, sample_bytes, build_digest))
        return shard, position, sample_bytes

    def add_fragment(self, fragment: bytes, metadata: SampleMetadata, sample_bytes: int,
                     build_digest: str | None = None) -> tuple[str, int, int]:
        """`add` for a sample already laid out as tar members (`sample_fragment` of a validated sample whose
        metadata is `metadata`, its member sizes summing to `sample_bytes`)."""
        shard, position, sample_bytes = self._writer(metadata.split).add_fragment(fragment, sample_bytes)
        self._index_rows.append(index_row(metadata, shard, position, sample_bytes, build_digest))
        return shard, position, sample_bytes

    def _writer(self, split: str) -> ShardWriter:
        if not SPLIT_RE.match(split):
            raise ValueError(f"split {split!r} must match {SPLIT_RE.pattern}")
        writer = self._writers.get(split)
        if writer is None:
            kept = [int(SHARD_NAME_RE.match(s.name).group(2)) for s in self._kept_shards if s.split == split]
            writer = self._writers[split] = ShardWriter(self.staging, split, self.max_shard_bytes,
                                                        self.max_samples_per_shard, max(kept, default=-1) + 1)
        return writer

    def publish(self, splits: tuple[str, ...] = (), extra_files: dict[str, bytes] | None = None,
                **manifest_fields: Any) -> DatasetManifest:
        """Finish every shard, then put the dataset in place with `dataset.json` last; returns the manifest.
        `splits`: split names listed in the manifest even when empty; `extra_files`: more files of the folder
        (name → bytes), published with the index; `manifest_fields`: `feature_stats`, `motion_stats`,
        `producer`."""
        for writer in self._writers.values():
            writer.close()
        written = [s for w in self._writers.values() for s in w.shards]
        shards = sorted(self._kept_shards + written, key=lambda s: s.name)
        index = pa.concat_tables([self._kept_index, pa.Table.from_pylist(self._index_rows, schema=INDEX_SCHEMA)])
        index = index.sort_by([("shard", "ascending"), ("position", "ascending")])
        wids = {split: WIDS_FILE_FORMAT.format(split=split) for split in sorted({s.split for s in shards})}
        staged = {INDEX_FILE: index_to_bytes(index), **(extra_files or {})}
        for split, name in wids.items():
            staged[name] = wids_descriptor(split, [s for s in shards if s.split == split])
        for name, data in staged.items():
            self.staging.write_bytes(self.staging.join(name), data)
        manifest = DatasetManifest(total_samples=index.num_rows, splits=_split_counts(index, shards, splits),
                                   shards=shards, wids=wids, **manifest_fields)
        # A rewritten shard whose bytes did not change (the open shard that took no new sample) stays in place.
        moved = [s.name for s in written if self._published_shards.get(s.name) != s]
        if not moved and self._same_as_published(manifest, index, extra_files or {}):
            self._published = True  # nothing to replace: the folder already holds this dataset
            self.staging.delete(self.staging.root, recursive=True)
            return manifest

        # From here until dataset.json is written the folder is not a dataset (readers get a clear error).
        self.storage.delete(self.storage.join(MANIFEST_FILE))
        for name in moved + list(staged):
            self.storage.move(self.staging.join(name), self.storage.join(name))
        self.storage.write_text(self.storage.join(MANIFEST_FILE), manifest.to_json_text())
        self._published = True
        self.staging.delete(self.staging.root, recursive=True)
        remove_stale(self.storage, keep={s.name for s in shards} | set(wids.values()))
        return manifest

    def _same_as_published(self, manifest: DatasetManifest, index: pa.Table, extra_files: dict[str, bytes]) -> bool:
        """Whether the dataset built is the one `published()` found, file for file."""
        previous = self._previous
        if previous is None or manifest.to_json_text() != previous.manifest.to_json_text():
            return False
        if not index.equals(previous.index):
            return False
        for name, data in extra_files.items():
            url = self.storage.join(name)
            if not self.storage.exists(url) or self.storage.read_bytes(url) != data:
                return False
        return True

    def discard(self) -> None:
        for writer in self._writers.values():
            writer.discard()
        self.staging.delete(self.staging.root, recursive=True)


def wids_descriptor(split: str, shards: list[ShardInfo]) -> bytes:
    """A `wids.ShardListDataset` descriptor of one split; shard URLs relative to the descriptor's folder."""
    descriptor = {"wids_version": 1, "name": f"humove-{split}",
                  "shardlist": [{"url": s.name, "nsamples": s.samples, "filesize": s.bytes} for s in shards]}
    return (json.dumps(descriptor, indent=2, sort_keys=True) + "\n").encode()


def _split_counts(index: pa.Table, shards: list[ShardInfo], splits: tuple[str, ...]) -> dict[str, SplitCounts]:
    rows = index.select(["split", "has_motion", "video_id"]).to_pylist()
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
