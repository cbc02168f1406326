"""`shards`: lay the kept clips' samples end to end into WebDataset tar shards, with a Parquet index and
`dataset.json`.

Each clip's sample was built, checked and written by the `pack` stage in a worker as the clip arrived (its tar
members, `artifacts/pack/<clip_id>.tar`, and its motion sums): this stage, in the driver, reads no clip and no
motion file. It decides where each sample goes, appends the samples' bytes to the shards as they are
(`humove.dataset.DatasetBuilder.add_fragment`, which hashes the shards) and merges the clips' motion sums into each
shard's statistics.

Output folder (config `output`, default `<run_dir>/dataset`; any `humove.storage.Storage` URL):
`humove-{split}-{index:06d}.tar`, `index.parquet`, `wids-{split}.json`, `dataset.json` (the sample spec is
`humove.schemas.shard`). The folder is published whole by `humove.dataset.DatasetBuilder`: everything is staged,
`dataset.json` is written last, and a failure leaves the previous complete dataset in place.

Incremental: a re-run never rewrites a finished shard for a new clip. Each split's shards fill in order; the
last one, while it has fewer than `max_samples_per_shard` samples, is the split's open shard. New clips (and ones
that failed before) are appended to the open shard, which is rewritten (staged, then replaced) with its old samples
first, and then to new shards numbered after it. A published sample is kept as long as its clip is still an input
and its `build_digest` (index.parquet; the `pack` stage's `sample_build_digest`: the sample's metadata fields,
the clip's and motion file's sha256, the statistics' window) is unchanged; a clip that left the inputs or changed
rewrites its split from the shard that held it on (the samples after it keep their order, the changed one goes to
the end). A re-run with nothing new writes nothing. The shard bounds and this stage's version are recorded in
dataset.json's `producer`; a change rebuilds every shard, as does a dataset that does not read back whole (said in
a warning). dataset.json's statistics are merged from each shard's motion sums (`shard-stats.parquet`), so
finished shards are not read again either.

Disk: once dataset.json is published, the `pack` fragments of the samples in closed shards (every shard of a
split but its open one) are deleted (`_delete_fragments`): a kept clip is then stored twice, as its clip and in
its shard, plus its motion sums (a few kB; a rewritten shard's statistics are merged from them). The `pack`
records stay, and the engine counts a clip packed by its record, so a re-run packs nothing again. A closed shard
is rewritten only when one of its samples changed or left (or every shard is rebuilt); its unchanged samples are
then read back from the published shard (`_PublishedSamples`), which is read whole first and checked against its
size and checksum in dataset.json: a damaged one stops the stage with one line naming it (restore it, or re-pack
with `--force pack`), and nothing is published or deleted. A new or changed clip comes from its fresh fragment.
A kill before the publish loses nothing; the deletion is idempotent (a run killed in it leaves the rest to the
next).

Determinism, so that two builds from the same records give byte-identical files: the sample bytes are the
`pack` stage's (fixed tar headers and metadata); within a split, new samples are appended in the order of a hash
of `clip_id` (`humove.sharding.order_key`), which also spreads the clips of one source video over the shards (a
shard then holds many videos, which helps shuffling during training); the statistics are merged clip by clip in
shard order and shard by shard. An incremental build depends on the order the clips came in: two run dirs fed the
same runs give the same bytes.

Throughput (`python -m bench.bench_shards`): a reader thread reads the next samples ahead while the shard writer
thread hashes (BLAKE3) and writes the current ones without copying them (`humove.dataset`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from humove.dataset import DatasetBuilder, fragment_members, published_samples, read_range, remove_stale
from humove.schemas.shard import (
    DEFAULT_OUTPUT_DIR,
    INDEX_FILE,
    INDEX_SCHEMA,
    MANIFEST_FILE,
    METADATA_EXT,
    SPLITS,
    DatasetError,
    DatasetManifest,
    SampleMetadata,
    ShardSampleError,
    parse_metadata,
    read_index,
)
from humove.schemas.shards import SCHEMA
from humove.sharding import (
    SHARD_STATS_FILE,
    MotionSums,
    closed_shards,
    manifest_statistics,
    order_key,
    statistics_from_bytes,
    statistics_to_bytes,
    sums_from_bytes,
)
from humove.stage import AggregateStage, Reads, Resources, StageConfig
from humove.storage import Storage
from humove.worker import error_record

log = logging.getLogger(__name__)

_READ_AHEAD = 4  # samples read ahead of the one being written
_SAMPLE_COLUMNS = frozenset({"sample_path", "sample_fragment_bytes", "sample_split", "sample_build_digest",
                             "sample_stats_path", "sample_val_fraction"})
# Settings that moved to the `pack` stage, which builds each sample in a worker.
_MOVED_TO_SAMPLE = ("val_fraction", "motion_column", "caption_column", "stats_window_s")


class ShardsConfig(StageConfig):
    output: str | None = Field(None, description="folder or URL of the dataset; default <run_dir>/dataset")
    max_shard_bytes: int = Field(1_000_000_000, gt=0, description="a shard is cut before it grows past this")
    max_samples_per_shard: int = Field(10_000, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _moved_settings(cls, data):
        moved = [name for name in _MOVED_TO_SAMPLE if isinstance(data, dict) and name in data]
        if moved:
            raise ValueError(f"{', '.join(f'shards.{name}' for name in moved)} moved to the pack stage (it builds "
                             f"each sample in a worker): set {', '.join(f'pack.{name}' for name in moved)}")
        return data


class ShardsStage(AggregateStage):
    name = "shards"
    # 3: sample schema 3 (the shot and the clip as two spans); 4: incremental, build_digest; 5: samples built by
    # the `pack` stage, statistics merged from per-clip sums
    version = "5"
    schema = SCHEMA
    Config = ShardsConfig
    resources = Resources(num_cpus=1, batch_size=1)
    description = "WebDataset shards, Parquet index and dataset.json from the samples of the kept clips"

    config: ShardsConfig

    @classmethod
    def reads(cls, config: ShardsConfig) -> Reads:
        """The `pack` stage's sample: its tar members, split, build digest and motion sums."""
        return Reads(_SAMPLE_COLUMNS)

    def output_url(self) -> str:
        return self.config.output or Storage(self.context.run_dir).join(DEFAULT_OUTPUT_DIR)

    def run(self, inputs: list[dict]) -> list[dict]:
        """Bring the dataset up to date with all kept clips' samples (joined upstream rows); one record per
        clip."""
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
                self._delete_fragments(inputs, records, previous.manifest)  # what a run killed before it left
                return records

            builder.keep([shard for shard in previous.manifest.shards if shard.name in plan.kept], kept_index)
            statistics = {name: previous.statistics[name] for name in plan.kept}
            for row, files in self._prefetched(plan.write, reader, previous.samples):
                clip_id, video_id = row["clip_id"], row["video_id"]
                try:
                    fragment, metadata, sample_bytes, sums = files.result()
                except DatasetError:  # a published shard that must give back samples is damaged: publish nothing
                    raise
                except Exception as exc:  # noqa: BLE001 - one unreadable sample must not fail the dataset
                    records.append({**error_record(self, clip_id, exc), "video_id": video_id})
                    continue
                shard_name, _, _ = builder.add_fragment(fragment, metadata, sample_bytes, row["sample_build_digest"])
                total = statistics.get(shard_name, MotionSums())
                statistics[shard_name] = total if sums is None else total.merge(sums)
                records.append(self.ok(clip_id, video_id=video_id, shard_name=shard_name,
                                       shard_split=metadata.split, sample_bytes=sample_bytes))
            manifest = builder.publish(splits=SPLITS, extra_files={SHARD_STATS_FILE: statistics_to_bytes(statistics)},
                                       producer=self._producer(), **manifest_statistics(statistics))
            self._delete_fragments(inputs, records, manifest)
        self._warn_of_empty_splits(records, inputs)
        return records

    def _delete_fragments(self, inputs: list[dict], records: list[dict], manifest: DatasetManifest) -> None:
        """Once the dataset is published: delete the pack fragments of the samples in its closed shards (their
        bytes are in the shard now, and a closed shard is only rewritten when one of its samples changes or
        leaves, from the shard itself: `_PublishedSamples`). The open shards' fragments stay: the next new clip
        rewrites those shards from them. The motion sums (`.stats.npz`, a few KB) stay too: a rewritten shard's
        statistics are merged from them. Idempotent: a fragment already gone is no error, and a run killed while
        deleting leaves the rest to the next."""
        closed = closed_shards(manifest.shards, self.config.max_samples_per_shard)
        done = {r["id"] for r in records if r["status"] == "ok" and r["shard_name"] in closed}
        by_folder: dict[str, list[str]] = {}
        for row in inputs:
            if row["clip_id"] in done:
                by_folder.setdefault(row["sample_path"].rsplit("/", 1)[0], []).append(row["sample_path"])
        storage = self.context.storage
        for folder, urls in by_folder.items():  # one listing per folder, not a look-up per clip (object stores)
            present = {url.rsplit("/", 1)[-1] for url in storage.list(folder, suffix=".tar")}
            for url in urls:
                if url.rsplit("/", 1)[-1] in present:
                    storage.delete(url)

    def _producer(self) -> dict[str, Any]:
        """dataset.json's `producer`: the settings that shape the shards; a re-run under others rebuilds them.
        (What shapes a sample, the `pack` stage's settings, is in each sample's `build_digest`.)"""
        return {"tool": "humove shards", "version": self.version, "max_shard_bytes": self.config.max_shard_bytes,
                "max_samples_per_shard": self.config.max_samples_per_shard}

    # The dataset already published ------------------------------------------------------------------------
    def _previous(self, builder: DatasetBuilder) -> _Published:
        """The published dataset this run extends: empty when there is none, or when it was built with other
        settings or does not read back whole (then every shard is rebuilt, said in a warning). Its samples can be
        read back (`_Published.samples`) wherever its dataset.json and index read, even when it is rebuilt."""
        storage, folder = builder.storage, self.output_url()

        def empty(samples: _PublishedSamples) -> _Published:
            return _Published(DatasetManifest(total_samples=0, splits={}, shards=[]), INDEX_SCHEMA.empty_table(),
                              {}, samples, found=False)

        def not_whole(exc: Exception, samples: _PublishedSamples) -> _Published:
            log.warning("shards: the dataset in %s does not read back whole (%s): rebuilding every shard", folder,
                        str(exc).splitlines()[0])
            return empty(samples)

        if not storage.exists(storage.join(MANIFEST_FILE)):
            return empty(_PublishedSamples(storage))
        try:
            published = builder.published()
        except (DatasetError, ShardSampleError, OSError, ValueError) as exc:  # e.g. a shard is missing
            return not_whole(exc, _PublishedSamples.of(storage))  # the other shards can still give samples back
        samples = _PublishedSamples(storage, published.manifest, published.index)
        if published.manifest.producer != self._producer():
            changed = sorted(k for k in set(published.manifest.producer) | set(self._producer())
                             if published.manifest.producer.get(k) != self._producer().get(k))
            log.warning("shards: %s was built with other settings (%s): rebuilding every shard", folder,
                        ", ".join(changed))
            return empty(samples)
        try:
            statistics = statistics_from_bytes(storage.read_bytes(storage.join(SHARD_STATS_FILE)))
            _check_published(published.manifest, published.index, statistics)
        except (OSError, ValueError, KeyError) as exc:
            return not_whole(exc, samples)
        return _Published(published.manifest, published.index, statistics, samples)

    def _assign(self, inputs: list[dict], previous: _Published) -> _Assignment:
        """Which published shards stay as they are, and which rows are written, in order, after them."""
        digests = {row["clip_id"]: row["sample_build_digest"] for row in inputs}
        by_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
        for row in inputs:
            if row["sample_split"] not in by_split:
                raise ValueError(f"shards: clip {row['clip_id']!r} has split {row['sample_split']!r}, not one of "
                                 f"{SPLITS}")
            by_split[row["sample_split"]].append(row)
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
            new = sorted((row for key, row in rows.items() if key not in placed), key=lambda r: order_key(r["clip_id"]))
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
            assignment.write += [rows[key] for shard in shards[first:] for key in samples[shard.name]
                                 if key in placed]
            assignment.write += new
        return assignment

    def _warn_of_empty_splits(self, records: list[dict], inputs: list[dict]) -> None:
        """A split that `pack.val_fraction` asks for but that holds no sample (few source videos: a video's clips
        all go to one split) is worth a word, not an error."""
        written = {split: sum(r["status"] == "ok" and r.get("shard_split") == split for r in records)
                   for split in SPLITS}
        fractions = sorted({row["sample_val_fraction"] for row in inputs})
        wanted = {"train": any(f < 1 for f in fractions), "val": any(f > 0 for f in fractions)}
        for split in SPLITS:
            if wanted[split] and not written[split] and any(written.values()):
                videos = len({row["video_id"] for row in inputs})
                log.warning(f"shards: the {split} split came out empty (val_fraction "
                            f"{', '.join(format(f, 'g') for f in fractions)} of {videos} source videos; all clips of "
                            "a video go to one split)")

    # Reading ahead ---------------------------------------------------------------------------------------
    def _prefetched(self, ordered: Iterable[dict], reader: ThreadPoolExecutor,
                    published: _PublishedSamples) -> Iterator[tuple[dict, Future]]:
        """(row, future of `_read_sample(row, published)`), the next `_READ_AHEAD` samples being read on `reader`
        while this thread writes the current one. A failed read is raised by the future's `result()`, inside the
        row's own error handling."""
        window: deque = deque()
        for row in ordered:
            window.append((row, reader.submit(_read_sample, row, published)))
            if len(window) > _READ_AHEAD:
                yield window.popleft()
        yield from window


def _read_sample(row: dict, published: _PublishedSamples) -> tuple[bytes, SampleMetadata, int, MotionSums | None]:
    """A sample as the `pack` stage wrote it: its tar members (checked: whole members of this clip's sample, the
    size the record names), its metadata, the sum of its member sizes and its motion sums (None without motion).
    The members come from the pack fragment, or, where it was deleted once published (`_delete_fragments`), from
    the published shard that holds the same sample (the same `build_digest`)."""
    url = row["sample_path"]
    try:
        fragment = Storage(url).read_bytes(url)
    except FileNotFoundError:
        fragment, url = published.fragment(row)
    if len(fragment) != row["sample_fragment_bytes"]:
        raise ShardSampleError(f"{url}: {len(fragment)} bytes, its sample record says {row['sample_fragment_bytes']}")
    key = row["clip_id"]
    members = fragment_members(fragment, url)
    if any(not name.startswith(f"{key}.") for name in members) or f"{key}.{METADATA_EXT}" not in members:
        raise ShardSampleError(f"{url}: members {sorted(members)} are not the sample {key!r}")
    metadata = parse_metadata(bytes(members[f"{key}.{METADATA_EXT}"]), where=url)
    if metadata.key != key or metadata.split != row["sample_split"]:
        raise ShardSampleError(f"{url}: its metadata names sample {metadata.key!r} in {metadata.split!r}, its "
                               f"record {key!r} in {row['sample_split']!r}")
    sums = None
    if row.get("sample_stats_path"):
        stats_url = row["sample_stats_path"]
        sums = sums_from_bytes(Storage(stats_url).read_bytes(stats_url), stats_url)
    return fragment, metadata, sum(len(data) for data in members.values()), sums


class _PublishedSamples:
    """The samples of the dataset published in the output folder, read back for a shard that is rewritten after
    their pack fragments were deleted. A shard is read whole and checked against its size and checksum in
    dataset.json when it is first needed (`humove.dataset.published_samples`), then its samples by offset. Built
    from dataset.json and the index alone, so that samples are found even where the dataset is rebuilt (other
    shard settings, missing statistics)."""

    def __init__(self, storage: Storage, manifest: DatasetManifest | None = None, index: pa.Table | None = None):
        self.storage = storage
        self.shards = {shard.name: shard for shard in manifest.shards} if manifest else {}
        rows = index.select(["key", "shard", "build_digest"]).to_pylist() if index is not None else []
        self.holder = {row["key"]: (row["shard"], row["build_digest"]) for row in rows}
        self.offsets: dict[str, dict[str, tuple[int, int]]] = {}  # shard → its samples' offsets, once read

    @classmethod
    def of(cls, storage: Storage) -> _PublishedSamples:
        """The dataset in `storage`'s folder as its dataset.json and index name it, its files unchecked (each shard
        is checked when read); none where those two do not read."""
        try:
            manifest = DatasetManifest.model_validate_json(storage.read_bytes(storage.join(MANIFEST_FILE)))
            with storage.open(storage.join(manifest.index), "rb") as handle:
                return cls(storage, manifest, read_index(handle))
        except (OSError, ValueError):
            return cls(storage, None, None)

    def fragment(self, row: dict) -> tuple[bytes, str]:
        """(The tar members of the row's sample as published, where they were read): raises FileNotFoundError
        when no published shard holds this sample (the pack fragment is then the only source, and it is gone),
        `DatasetError` naming the shard when the shard that holds it is not the one published."""
        key, fragment_url = row["clip_id"], row["sample_path"]
        shard, digest = self.holder.get(key, (None, None))
        if shard not in self.shards or digest != row["sample_build_digest"]:
            raise FileNotFoundError(2, "no such pack fragment, and no published shard holds its sample: re-pack "
                                       "the clip (humove run … --force pack)", fragment_url)
        if shard not in self.offsets:
            try:
                self.offsets[shard] = published_samples(self.storage, self.shards[shard])
            except DatasetError as exc:
                raise DatasetError(f"shards: {exc}; its samples' pack fragments were deleted once it was "
                                   "closed: restore the shard (from a copy of the dataset) or re-pack its clips "
                                   "(humove run … --force pack)") from exc
        url = self.storage.join(shard)
        if key not in self.offsets[shard]:
            raise DatasetError(f"shards: {url} does not hold sample {key!r}, which {INDEX_FILE} places there")
        offset, length = self.offsets[shard][key]
        return read_range(self.storage, url, offset, length), f"{url} (sample {key!r})"


@dataclass
class _Published:
    """The dataset a run extends: its manifest, index and each shard's motion sums."""

    manifest: DatasetManifest
    index: pa.Table  # INDEX_SCHEMA
    statistics: dict[str, MotionSums]  # shard name → its sums
    samples: _PublishedSamples  # the published samples, to read back (those of a rebuilt dataset too)
    found: bool = True  # False: there is none to extend (or it is rebuilt), so this run publishes one


@dataclass
class _Assignment:
    kept: list[str] = field(default_factory=list)  # published shards that stay as they are
    write: list[dict] = field(default_factory=list)  # the rows whose samples are appended, in order
    changed: bool = False  # some shard is written or goes


def _check_published(manifest: DatasetManifest, index: pa.Table, statistics: dict[str, MotionSums]) -> None:
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
