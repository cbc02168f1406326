"""`ingest`: list the input videos (folder, files, manifest or the built-in demo videos) and probe each one.

One record per input, keyed by `video_id` (content hash, so the same bytes under two names share an id and the
engine marks the later one `duplicate`). Every listed candidate (a name with a video extension, hidden files
aside) gets a record: probe failures become rejections with a machine-readable reason (`missing_path` for a
manifest row without one, `bad_url` for a `file://` URL that names no local file, `missing_file`, `not_a_file`
for a directory named like a video, `not_a_regular_file` for a FIFO, device or socket (never opened, so a FIFO
cannot block the run), `broken_link`, `unreachable`, `empty`, `unreadable`, `truncated`, `no_video_stream`,
`no_frames`, `absurd_dimensions`); duration and size thresholds are decisions, re-applied without probing again.
Durations come from the stream's own packets when the container's header disagrees (`humove.video.probe`).

A file another stage of the run wrote (download's file, the demo videos in the run dir) that is not there is an
`error`, retried on the next run, never a rejection: on a cluster whose nodes do not share the run dir it may
be on another node, and a rejection is final.

`source_path` (what to read again) stays in the records; the dataset gets only `source_uri`: the URL of a remote
input, or the path relative to the source root (the listed folder, the manifest's folder, the single file's
folder; `builtin:demo-videos/<name>` for demo videos), so no path of the building machine reaches the shards.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from fsspec.core import url_to_fs

from humove import ids
from humove.collect.handoff import DOWNLOAD_FIELDS, ingest_item_from_download, is_download_row
from humove.schemas import ingest as ingest_schema
from humove.stage import MapStage, Reads, Rejection, Resources, StageConfig, decision, listing
from humove.storage import ManifestError, Storage, is_local, read_manifest
from humove.video import BACKEND, VideoError, probe

DEMO_SOURCE = "builtin:demo-videos"
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".parquet")
MANIFEST_COLUMNS = ("keyword", "category", "subcategory", "source", "licence")


class IngestConfig(StageConfig):
    source: str | list[str] = listing(
        DEMO_SOURCE, "a folder (recursive), a video file, a manifest (.csv/.jsonl/.parquet with a path or "
        "url column), a list of those, or builtin:demo-videos")
    extensions: list[str] = listing(list(VIDEO_EXTENSIONS), "what counts as a video when listing a folder")
    min_duration_s: float = decision(1.0, "reject videos shorter than this (too_short)", measure="duration_s")
    min_side_px: int = decision(64, "reject videos whose shorter side is below this (too_small)")
    max_duration_s: float | None = decision(None, "reject videos longer than this (too_long); None = no cap",
                                            measure="duration_s")


class IngestError(ValueError):
    """The configured source cannot be listed (a folder or manifest that is missing or malformed)."""


class MissingUpstreamFile(FileNotFoundError):
    """A file an earlier stage of this run wrote is not here: an `error` (retried), not a rejection."""


class IngestStage(MapStage):
    name = "ingest"
    version = "3"
    schema = ingest_schema.SCHEMA
    Config = IngestConfig
    resources = Resources(num_cpus=1, batch_size=8)
    description = "list input videos and probe them with PyAV"
    is_source: ClassVar[bool] = True
    backend: ClassVar[str] = BACKEND

    @classmethod
    def reads(cls, config: IngestConfig) -> Reads:
        return Reads(DOWNLOAD_FIELDS)  # after `download`: the file it fetched and its annotations (`handoff`)

    # Listing -----------------------------------------------------------------------------------------
    def list_inputs(self) -> list[dict]:
        """One dict per distinct input: `input_id` (normalised path or URL; `builtin:demo-videos/<name>` for a
        demo video, so the id does not depend on where the run dir is; `<manifest>#row<n>` for a manifest row
        without a path), `source_path` (what to probe) and the manifest columns. The same input listed twice
        is kept once (first occurrence wins)."""
        sources = self.config.source if isinstance(self.config.source, list) else [self.config.source]
        items: dict[str, dict] = {}
        for source in sources:
            for item in self._list_source(source):
                items.setdefault(item["input_id"], item)
        return list(items.values())

    def _list_source(self, source: str) -> list[dict]:
        if source == DEMO_SOURCE:
            return [_demo_item(path) for path in self._demo_videos()]
        if source.lower().endswith(MANIFEST_EXTENSIONS):
            return _read_manifest(source)
        if source.lower().endswith(tuple(e.lower() for e in self.config.extensions)):
            return [_item(source, root=_parent(source))]  # a single video; process() rejects it if it is bad
        try:
            fs, path = url_to_fs(source)
            is_folder, is_file = fs.isdir(path), fs.isfile(path)
        except Exception as exc:  # noqa: BLE001 - unknown protocol, missing driver, network
            raise IngestError(f"source {source!r} cannot be listed: {type(exc).__name__}: {exc}") from exc
        if is_folder:
            return [_item(p, root=source) for p in _list_folder(source, self.config.extensions)]
        if is_file:
            return [_item(source, root=_parent(source))]
        raise IngestError(f"source {source!r} is neither a folder, a video file nor a manifest "
                          f"({', '.join(MANIFEST_EXTENSIONS)}), or it does not exist")

    def _demo_videos(self) -> list[str]:
        """The built-in sample videos under `<run_dir>/samples/` (written once, deterministic)."""
        from humove.samples import write_demo_videos  # renders with torch and the body model: only for `source: demo`

        storage = self.context.storage
        folder = storage.join("samples")
        if storage.local:
            return write_demo_videos(folder)
        scratch = self.context.scratch_dir()
        try:
            urls = []
            for path in write_demo_videos(scratch):
                url = storage.join("samples", os.path.basename(path))
                if not storage.exists(url):
                    storage.put_file(path, url)
                urls.append(url)
            return urls
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    # Probing -----------------------------------------------------------------------------------------
    def process(self, item: dict) -> dict:
        # Written by this run (download's file, a demo video): missing means elsewhere or not yet, not gone.
        from_run = is_download_row(item) or item["input_id"].startswith(f"{DEMO_SOURCE}/")
        item = ingest_item_from_download(item)  # after `download`: probe the downloaded file, keep its keyword
        annotations = {name: item.get(name) for name in MANIFEST_COLUMNS}
        annotations["source_uri"] = item.get("source_uri")
        fallback_id = ids.video_id_from_url(item["input_id"])
        for reason in ("missing_path", "bad_url"):  # a manifest row that names no video it can read
            if item.get(reason):
                return self.reject(fallback_id, reason, detail=item[reason], source_path=None, **annotations)
        source = item.get("source_path") or item["input_id"]
        fields = {"source_path": source, **annotations}
        if is_local(source):
            local = source[len("file://"):] if source.startswith("file://") else source
            if os.path.isdir(local):
                return self.reject(fallback_id, "not_a_file", detail=f"{source} is a directory", **fields)
            if os.path.islink(local) and not os.path.exists(local):
                return self.reject(fallback_id, "broken_link",
                                   detail=f"{source} links to {os.readlink(local)}, which does not exist", **fields)
            kind = _special_file_kind(local)
            if kind:  # never opened: reading a FIFO waits for a writer, a device never ends
                link = f" (a link to {os.path.realpath(local)})" if os.path.islink(local) else ""
                return self.reject(fallback_id, "not_a_regular_file", detail=f"{source} is a {kind}{link}",
                                   **fields)
        try:
            fs, fs_path = url_to_fs(source)
            found = fs.isfile(fs_path)
        except Exception as exc:  # noqa: BLE001 - any filesystem/network failure means: cannot reach it
            return self.reject(fallback_id, "unreachable", detail=f"{source}: {type(exc).__name__}: {exc}",
                               **fields)
        if not found and from_run:
            raise MissingUpstreamFile(f"{source}, written earlier in this run, is not here (a run dir that the "
                                      f"cluster's nodes do not share?); retried on the next run")
        if not found:
            return self.reject(fallback_id, "missing_file", detail=f"{source} does not exist", **fields)

        scratch = None if is_local(source) else self.context.scratch_dir()
        try:
            # Decoders need a real file: objects from s3:// / gs:// are copied into scratch first.
            path = Storage(source).local_copy(source, scratch) if scratch else source
            try:
                video_id = ids.video_id_from_file(path)
            except OSError as exc:
                return self.reject(fallback_id, "unreadable", detail=f"{source}: cannot read: {exc}",
                                   **fields)
            try:
                info = probe(path)
            except VideoError as exc:
                size = os.path.getsize(path)
                detail = exc.detail.replace(path, source)  # name the input, not a scratch copy
                return self.reject(video_id, exc.reason, detail=detail, size_bytes=size, **fields)
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        return self.ok(video_id, backend=BACKEND, **fields, **info.as_dict())

    # Decision ----------------------------------------------------------------------------------------
    def decide(self, record: dict) -> Rejection | None:
        c = self.config
        duration = record["duration_s"]
        if duration < c.min_duration_s:
            return Rejection("too_short", duration, f"{duration:.2f} s long", f"≥ {c.min_duration_s:g} s")
        min_side = min(record["width"], record["height"])
        if min_side < c.min_side_px:
            return Rejection("too_small", float(min_side), f"{record['width']}×{record['height']} px, shorter side "
                             f"{min_side} px", f"≥ {c.min_side_px} px")
        if c.max_duration_s is not None and duration > c.max_duration_s:
            return Rejection("too_long", duration, f"{duration:.1f} s long", f"≤ {c.max_duration_s:g} s")
        return None


def _special_file_kind(path: str) -> str | None:
    """What a local path (links followed) is when it exists but is no regular file, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return None


def file_url_path(url: str) -> str:
    """The local path of a `file://` URL (`file:///abs/p%20q.mp4` → `/abs/p q.mp4`; host empty or localhost).
    Raises ValueError for one that names no absolute local path (another host, a relative path)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ValueError(f"{url} is not a local file URL (file:///absolute/path)")
    return unquote(parts.path)


def _normalise(path_or_url: str) -> str:
    """The stable id of an input: an absolute, normalised local path, or the URL as given (stripped)."""
    text = str(path_or_url).strip()
    if is_local(text):
        if text.startswith("file://"):
            text = file_url_path(text)
        return os.path.abspath(os.path.normpath(os.path.expanduser(text)))
    return text


def _item(path_or_url: str, root: str | None = None, **columns) -> dict:
    """A listed input: `source_path` to read it, `source_uri` for the dataset (see the module docstring)."""
    input_id = _normalise(path_or_url)
    return {"input_id": input_id, "source_path": input_id, "source_uri": _source_uri(input_id, root),
            **{c: columns.get(c) for c in MANIFEST_COLUMNS}}


def _source_uri(input_id: str, root: str | None) -> str:
    """The URL of a remote input; a local one's path relative to `root`, with '/' separators."""
    if not is_local(input_id):
        return input_id
    base = _normalise(root) if root else os.path.dirname(input_id)
    return os.path.relpath(input_id, base).replace(os.sep, "/")


def _parent(path_or_url: str) -> str:
    text = str(path_or_url).strip()
    return os.path.dirname(_normalise(text)) if is_local(text) else text.rsplit("/", 1)[0]


def _demo_item(path_or_url: str) -> dict:
    """A built-in demo video: its id names the sample, not where the run dir is, so a copied or moved run dir
    does not probe them again; `source_path` is the file to probe."""
    name = posixpath.basename(str(path_or_url).rstrip("/"))
    return {**_item(path_or_url), "input_id": f"{DEMO_SOURCE}/{name}", "source_uri": f"{DEMO_SOURCE}/{name}"}


def _list_folder(folder: str, extensions: list[str]) -> list[str]:
    """Everything under `folder` named like a video, recursively, sorted: files, and also directories and
    broken links so that they get a rejection rather than vanish (hidden files and temp files skipped)."""
    fs, root = url_to_fs(folder)
    suffixes = tuple(e.lower() for e in extensions)
    found = []
    for path in fs.find(root, withdirs=True):
        base = os.path.basename(path.rstrip("/"))
        if path.rstrip("/") == root.rstrip("/") or base.startswith(".") or not base.lower().endswith(suffixes):
            continue
        found.append(path if is_local(folder) else fs.unstrip_protocol(path))
    return sorted(found)


def _read_manifest(url: str) -> list[dict]:
    """Rows of a CSV / JSONL / Parquet manifest with a `path` or `url` column. Relative paths are relative to
    the manifest's folder; a `file://` URL is the local file it names (a row whose URL names none is rejected
    alone, `bad_url`)."""
    try:
        table = read_manifest(url)
    except ManifestError as exc:
        raise IngestError(str(exc)) from exc
    location_columns = [c for c in ("path", "url") if c in table.column_names]
    if not location_columns:
        raise IngestError(f"manifest {url} needs a 'path' or 'url' column, found {table.column_names}")

    name = _normalise(url)
    base = os.path.dirname(name) if is_local(url) else url.rsplit("/", 1)[0]
    items = []
    for number, row in enumerate(table.to_pylist(), start=1):
        # A row may give a local path, a URL, or both (the path wins: it is already here).
        given = [str(row[c]).strip() for c in location_columns if row.get(c) is not None]
        location = next((text for text in given if text), None)
        annotations = {c: (None if row.get(c) is None else str(row[c])) for c in MANIFEST_COLUMNS}
        if location is None:  # this row alone is rejected (missing_path); the rest of the manifest goes on
            items.append({"input_id": f"{name}#row{number}", "source_path": None, **annotations,
                          "source_uri": f"{posixpath.basename(url)}#row{number}",
                          "missing_path": f"manifest {url} row {number}: no {' or '.join(location_columns)}"})
            continue
        if location.startswith("file:"):
            try:
                location = file_url_path(location)
            except ValueError as exc:
                items.append({"input_id": f"{name}#row{number}", "source_path": None, **annotations,
                              "source_uri": f"{posixpath.basename(url)}#row{number}",
                              "bad_url": f"manifest {url} row {number}: {exc}"})
                continue
        elif is_local(location) and not os.path.isabs(os.path.expanduser(location)):
            location = os.path.join(base, location) if is_local(url) else f"{base}/{location}"
        items.append(_item(location, root=base, **annotations))
    return items
