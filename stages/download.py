"""`download`: fetch source videos with yt-dlp, from keywords (search) or from a URL list / manifest.

After `keywords`, each keyword is searched (`ytsearch{n}:{query}` by default, any extractor or URL template) and
its candidates are downloaded; as the first stage, `source` lists URLs (a .txt with one per line, a .csv /
.jsonl / .parquet manifest with a `url` column and optional keyword, category, subcategory, licence, or URLs
inline). One record per video, keyed by the content hash of the file (the id `ingest` gives it). Videos are
deduplicated by extractor id: a video found again (another keyword) reuses the stored file and reads as a
`duplicate`. Transient failures (429, 5xx, network, truncated bodies, after the stage's own retries) are
`error` records that the engine retries; permanent ones are rejections with a reason (private, removed,
geo_blocked, too_long, too_large, …). Files go to `<run_dir>/artifacts/download/<extractor>-<id>.<ext>`
(local or object store) and feed `ingest` with keyword, category and licence.

A URL list is untrusted: requests reach only public addresses over http(s) (`blocked_address`,
`scheme_not_allowed` otherwise; `allow_private_networks`, `allowed_schemes` widen that), URL credentials and the
proxy's password are shown as `user:***@host` in records and the stage state, and the cookies file is only read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

from pydantic import Field

from humove import ids
from humove.collect.ytdlp import (
    Candidate,
    Downloader,
    DownloadOptions,
    PermanentFailure,
    TransientFailure,
    dedup_key,
)
from humove.redact import redact_text
from humove.schemas import download as download_schema
from humove.stage import MapStage, Reads, Resources, StageConfig, listing
from humove.storage import open_url, read_manifest

BACKEND = "yt-dlp"
# Offline stand-in for a video site: every query "finds" the built-in demo videos (humove.samples), fetched by
# yt-dlp from file:// URLs (`allowed_schemes` must list file), so an offline demo runs keywords → download →
# ingest through the real code path.
DEMO_SEARCH = "builtin:demo-videos"
_DEMO_LOCK = threading.Lock()
MANIFEST_COLUMNS = ("keyword", "category", "subcategory", "licence")
# Politeness and network settings: changing them does not change what is downloaded, so not in the fingerprint
# (nor is the proxy: a secret() field). Which addresses and schemes are allowed does change it.
_OPERATIONAL = {"retries", "backoff_s", "max_wait_s", "socket_timeout_s", "per_host_concurrency",
                "per_host_interval_s", "ratelimit_bytes_per_s", "cookies_file", "download_threads"}


class DownloadConfig(StageConfig, DownloadOptions):
    source: str | list[str] | None = listing(
        None, "as the first stage: a URL list (.txt), a manifest (.csv/.jsonl/.parquet with a url column), a "
        "URL, or a list of those")
    search: str = Field("ytsearch{n}:{query}", description="search target per keyword: a yt-dlp search prefix or "
                                                           "a URL template with {query} and {n}")
    results_per_keyword: int = Field(5, ge=1, le=500)
    download_threads: int = Field(4, ge=1, description="items of a batch downloaded at once, per worker")

    def fingerprint_dict(self) -> dict:
        return {k: v for k, v in super().fingerprint_dict().items() if k not in _OPERATIONAL}


class DownloadStage(MapStage):
    name = "download"
    version = "1"
    schema = download_schema.SCHEMA
    Config = DownloadConfig
    resources = Resources(num_cpus=1, batch_size=8, concurrency=4)
    description = "search and download source videos with yt-dlp"
    is_source: ClassVar[bool] = True  # a source when first; after `keywords` it maps keyword records
    backend: ClassVar[str] = BACKEND

    config: DownloadConfig

    @classmethod
    def reads(cls, config: DownloadConfig) -> Reads:
        """After `keywords`: the keyword to search for and what `_annotations` hands on to ingest."""
        return Reads({"keyword_text", "keyword_category", "keyword_fine_category"},
                     if_present={"download_query", *MANIFEST_COLUMNS})

    # Listing (first stage) -------------------------------------------------------------------------------
    def list_inputs(self) -> list[dict]:
        if not self.config.source:
            raise ValueError("download is the first stage but has no `source` (a URL list or manifest)")
        sources = self.config.source if isinstance(self.config.source, list) else [self.config.source]
        items: dict[str, dict] = {}
        for source in sources:
            try:
                listed = _list_source(source)
            except (OSError, ValueError) as exc:  # printed: no password of a source URL in it, nor in a cause
                raise ValueError(redact_text(f"download: {exc}")) from None
            for item in listed:
                items.setdefault(item["input_id"], item)
        return list(items.values())

    # Work --------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        options = DownloadOptions(**{name: getattr(self.config, name) for name in DownloadOptions.model_fields})
        self.downloader = Downloader(options)
        self._key_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._demo_folder: str | None = None  # where an object-store run's demo videos render (`_demo_candidates`)

    def process(self, item: dict) -> list[dict]:
        annotations = _annotations(item)
        if item.get("keyword_text"):  # from the keywords stage: search first
            query = item["keyword_text"]
            try:
                candidates = (self._demo_candidates() if self.config.search == DEMO_SEARCH else
                              self.downloader.search(self.config.search, query, self.config.results_per_keyword))
            except PermanentFailure as failure:
                return [self.reject(ids.video_id_from_url(query), f"search_{failure.reason}",
                                    detail=redact_text(failure.detail), download_query=query, **annotations)]
            if not candidates:
                return [self.reject(ids.video_id_from_url(query), "no_results",
                                    detail=f"search {self.config.search!r} found nothing for {query!r}",
                                    download_query=query, **annotations)]
        else:
            query = item.get("download_query") or item["input_id"]
            candidates = [Candidate(url=query)]
        return [self._fetch(candidate, query, annotations) for candidate in candidates]

    def process_batch(self, items: list[dict]) -> list[list[dict] | BaseException]:
        def one(item):
            try:
                return self.process(item)
            except Exception as exc:  # noqa: BLE001 - one failing item must not fail the batch
                return DownloadStageError(redact_text(f"{type(exc).__name__}: {exc}"))  # the message is written

        with ThreadPoolExecutor(max_workers=min(self.config.download_threads, max(1, len(items)))) as pool:
            return list(pool.map(one, items))

    def _demo_candidates(self) -> list[Candidate]:
        """The demo videos as file:// URLs: under `<run_dir>/samples/` for a local run dir, else in a private
        scratch folder of this worker (never a shared one in /tmp, which another user could fill first), removed
        when the worker ends."""
        from humove.samples import write_demo_videos

        storage = self.context.storage
        with _DEMO_LOCK:  # threads of one batch would otherwise render the same videos at once
            if storage.local:
                folder = storage.join("samples")
            else:
                if self._demo_folder is None:
                    self._demo_folder = self.context.scratch_dir()
                    weakref.finalize(self, shutil.rmtree, self._demo_folder, ignore_errors=True)
                folder = self._demo_folder
            paths = write_demo_videos(folder)[: self.config.results_per_keyword]
        return [Candidate(url="file://" + os.path.abspath(path)) for path in paths]

    def _fetch(self, candidate: Candidate, query: str, annotations: dict) -> dict:
        """The record of one candidate. What it holds of a URL is redacted: a password in a listed URL (or in
        yt-dlp's messages) is never written."""
        shown = redact_text(candidate.url)
        url_id = ids.video_id_from_url(shown)
        base = {"download_query": redact_text(query), "download_webpage": shown, **annotations}
        try:
            # Found before (another keyword, an earlier run): the stored file, no request at all.
            known = self._stored(dedup_key(candidate.extractor, candidate.extractor_id, candidate.url))
            if known:
                return self.ok(known["video_id"], **_record_fields(known, base), download_attempts=0)
            info, probe_tries = self.downloader.probe(candidate.url)
            key = dedup_key(info.get("extractor_key"), info.get("id"), info.get("webpage_url") or candidate.url)
            with self._lock_for(key):
                known = self._stored(key)
                if known:
                    return self.ok(known["video_id"], **_record_fields(known, base), download_attempts=probe_tries)
                return self._download(candidate, info, probe_tries, key, base)
        except PermanentFailure as failure:
            return self.reject(url_id, failure.reason, detail=redact_text(f"{shown}: {failure.detail}"), **base)
        except TransientFailure as failure:
            return {"id": url_id, "status": "error", "error_type": f"TransientFailure.{failure.reason}",
                    "error_message": redact_text(f"{shown}: {failure.detail}")[:2000], **base}

    def _stored(self, key: str) -> dict | None:
        """The stored video's id and metadata (`<key>.json`, written after its file) or None."""
        storage = self.context.storage
        sidecar = self.context.artifact_url(key, "json")
        if not storage.exists(sidecar):
            return None
        known = json.loads(storage.read_text(sidecar))
        # The video is the file beside its sidecar in this run dir, whatever path the sidecar recorded: a run dir
        # copied or moved here must not point at the one it came from (a suffix that is not a plain extension is
        # not trusted: the video is downloaded again).
        ext = str(known.get("download_path", "")).rsplit(".", 1)[-1]
        if not re.fullmatch(r"[A-Za-z0-9]{1,8}", ext):
            return None
        known["download_path"] = self.context.artifact_url(key, ext)
        return known if storage.exists(known["download_path"]) else None

    def _download(self, candidate: Candidate, info: dict, probe_tries: int, key: str, base: dict) -> dict:
        storage = self.context.storage
        artifact = self.context.artifact_url(key, info.get("ext") or "mp4")
        scratch = self.context.scratch_dir()
        try:
            done = self.downloader.download(candidate.url, scratch, info=info)
            video_id = ids.video_id_from_file(done.path)
            storage.put_file(done.path, artifact)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        metadata = {
            "video_id": video_id, "download_path": artifact, "download_webpage": redact_text(done.webpage),
            "download_extractor": done.extractor, "download_extractor_id": done.extractor_id,
            "download_title": done.title, "download_uploader": done.uploader, "download_duration_s": done.duration_s,
            "download_site_licence": done.licence, "download_format": done.format, "download_width": done.width,
            "download_height": done.height, "download_bytes": done.num_bytes,
        }
        storage.write_text(self.context.artifact_url(key, "json"), json.dumps(metadata, sort_keys=True))
        return self.ok(video_id, **_record_fields(metadata, base), download_attempts=done.attempts + probe_tries - 1)

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._key_locks.setdefault(key, threading.Lock())


class DownloadStageError(RuntimeError):
    """An unexpected failure of one item, its message redacted (it may quote a URL with a password)."""


def _record_fields(metadata: dict, base: dict) -> dict:
    """A record's fields from stored metadata and this input's annotations. The licence a manifest states wins
    over the one the site reports; the page URL is the video's own, not the search page."""
    fields = {k: v for k, v in metadata.items() if k not in ("video_id", "download_site_licence")}
    return {**base, **fields, "download_licence": base.get("download_licence") or metadata.get("download_site_licence")}


def _annotations(item: dict) -> dict:
    """Keyword, category and licence handed on to ingest: from the keyword record, or the manifest row."""
    return {
        "keyword_id": item.get("keyword_id"),
        "download_keyword": item.get("keyword_text") or item.get("keyword"),
        "download_category": item.get("keyword_category") or item.get("category"),
        "download_subcategory": item.get("keyword_fine_category") or item.get("subcategory"),
        "download_licence": item.get("licence"),
    }


def _list_source(source: str) -> list[dict]:
    lowered = source.lower()
    if lowered.endswith(".txt"):
        with open_url(source, "rt") as handle:
            lines = [line.strip() for line in handle]
        return [_url_item(line) for line in lines if line and not line.startswith("#")]
    if lowered.endswith((".csv", ".jsonl", ".parquet")):
        return _read_manifest(source)
    return [_url_item(source)]


def _url_item(url: str, **columns) -> dict:
    """A listed URL as an input: its id (stored in the run dir) is the URL with any password masked; the URL
    itself travels only in memory, to the worker that fetches it."""
    url = url.strip()
    return {"input_id": redact_text(url), "download_query": url, **{c: columns.get(c) for c in MANIFEST_COLUMNS}}


def _read_manifest(url: str) -> list[dict]:
    table = read_manifest(url)
    if "url" not in table.column_names:
        raise ValueError(f"manifest {url} needs a 'url' column, found {table.column_names}")
    items = []
    for number, row in enumerate(table.to_pylist(), start=1):
        if not row.get("url") or not str(row["url"]).strip():
            raise ValueError(f"manifest {url} row {number} has no url")
        items.append(_url_item(str(row["url"]), **{c: None if row.get(c) is None else str(row[c])
                                                   for c in MANIFEST_COLUMNS}))
    return items


def _float(value) -> float | None:
    return None if value is None else float(value)


def _int(value) -> int | None:
    return None if value is None else int(value)
