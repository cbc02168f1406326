"""`download`: yt-dlp against a local HTTP server (loopback only, started and stopped by the tests) that serves
small MP4s and pages, and injects 503, 429 + Retry-After, dropped connections, truncated bodies, slow responses and
redirects. The suite's server is on 127.0.0.1, so most tests allow private networks; the network-policy tests do
not, and a test that needs a "public" server puts one on 127.0.0.2 and tells the policy (a fake classifier) so."""

from __future__ import annotations

import csv
import email.utils
import http.server
import json
import math
import os
import shutil
import socket
import threading
import time
import traceback
import urllib.parse
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml
from fixtures_video import write_video

from humove import ids
from humove.collect.ytdlp import (
    Downloader,
    DownloadOptions,
    PermanentFailure,
    TransientFailure,
    classify,
    dedup_key,
    retry_after,
)
from humove.config import load_pipeline
from humove.engine import Runner
from humove.ledger import Ledger
from humove.redact import redact_text
from humove.stage import StageContext
from humove.stages.download import DownloadConfig, DownloadStage


class VideoServer:
    """Serves `/videos/<name>` from a dict of bytes, `/search?q=…` as an HTML page of <video> tags and
    `/pages/<name>` from a dict of HTML.

    `plan[path]` is a list of faults consumed one per request to that path: "503", "429" (Retry-After:
    `retry_after`, or what it returns when it is a function), "404", "403", "drop" (connection closed before a
    response), "truncate" (half the body), ("slow", seconds) (waits before answering), ("redirect", url) (302 to
    url). Every request is logged as
    (path, fault or "ok"), and the Cookie header of each in `cookies`."""

    def __init__(self, host: str = "127.0.0.1"):
        self.files: dict[str, bytes] = {}
        self.pages: dict[str, str] = {}
        self.search_results: dict[str, list[str]] = {}
        self.plan: dict[str, list] = {}
        self.log: list[tuple[str, str]] = []
        self.cookies: list[str | None] = []
        self.retry_after = "1"
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                try:
                    server.handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading (yt-dlp's metadata request reads only the start)

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"{self.base}/videos/{name}"

    def handle(self, request) -> None:
        parsed = urllib.parse.urlsplit(request.path)
        with self._lock:
            queue = self.plan.get(parsed.path) or []
            fault = queue.pop(0) if queue else "ok"
            self.log.append((parsed.path, fault if isinstance(fault, str) else fault[0]))
            self.cookies.append(request.headers.get("Cookie"))
        if isinstance(fault, tuple) and fault[0] == "redirect":
            request.send_response(302)
            request.send_header("Location", fault[1])
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if isinstance(fault, tuple) and fault[0] == "slow":
            time.sleep(fault[1])
            fault = "ok"
        if fault == "drop":
            request.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault in ("503", "404", "403", "429"):
            request.send_response(int(fault))
            if fault == "429":
                request.send_header("Retry-After",
                                    self.retry_after() if callable(self.retry_after) else self.retry_after)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if parsed.path == "/search":
            query = urllib.parse.parse_qs(parsed.query).get("q", [""])[0]
            tags = "".join(f'<video src="/videos/{name}"></video>' for name in self.search_results.get(query, []))
            self._send(request, f"<html><head><title>{query}</title></head><body>{tags}</body></html>".encode(),
                       "text/html")
            return
        if parsed.path.startswith("/pages/"):
            self._send(request, self.pages[parsed.path.removeprefix("/pages/")].encode(), "text/html")
            return
        body = self.files.get(parsed.path.removeprefix("/videos/"))
        if body is None:
            request.send_response(404)
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        if fault == "truncate":
            request.send_response(200)
            request.send_header("Content-Type", "video/mp4")
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body[: len(body) // 2])
            request.wfile.flush()
            request.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(request, body, "video/mp4")

    @staticmethod
    def _send(request, body: bytes, content_type: str) -> None:
        request.send_response(200)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def body_requests(self, name: str) -> list[str]:
        return [fault for path, fault in self.log if path == f"/videos/{name}"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path):
    srv = VideoServer()
    for index, name in enumerate(("a.mp4", "b.mp4", "c.mp4")):
        with open(write_video(str(tmp_path / name), frames=24 + index, width=64, height=48), "rb") as handle:
            srv.files[name] = handle.read()
    yield srv
    srv.close()


# The suite's server is on 127.0.0.1: a private address, allowed here and refused by default.
FAST = {"retries": 3, "backoff_s": 0.05, "per_host_interval_s": 0.0, "socket_timeout_s": 2.0,
        "allow_private_networks": True}


def make_stage(run_dir, **config) -> DownloadStage:
    stage = DownloadStage(DownloadConfig(**{**FAST, **config}), StageContext(str(run_dir), "download"))
    stage.setup()
    return stage


# Downloader against the server ------------------------------------------------------------------------------
# The first request of a download reads the metadata (yt-dlp's generic extractor), the next one the body.
@pytest.mark.parametrize("faults, tries", [
    (["503"], 2), (["drop"], 2), (["ok", "truncate"], 2), (["ok", "drop"], 2), ([("slow", 0.3)], 1),
    (["503", "drop", "ok", "truncate", "503"], 5),
])
def test_transient_faults_are_retried_until_the_file_arrives_whole(server, tmp_path, faults, tries):
    server.plan["/videos/a.mp4"] = list(faults)
    done = Downloader(DownloadOptions(**{**FAST, "retries": 4})).download(server.url("a.mp4"), str(tmp_path / "o"))
    with open(done.path, "rb") as handle:
        assert handle.read() == server.files["a.mp4"]
    assert done.attempts == tries
    assert done.extractor == "Generic" and done.num_bytes == len(server.files["a.mp4"])


@pytest.mark.parametrize("retry_after_header", [
    "1", lambda: email.utils.formatdate(math.ceil(time.time()) + 1, usegmt=True),  # ≥ 1 s ahead when answered
], ids=["seconds", "http-date"])
def test_429_waits_for_retry_after_on_that_host(server, tmp_path, retry_after_header):
    server.plan["/videos/a.mp4"] = ["429"]
    server.retry_after = retry_after_header
    started = time.monotonic()
    done = Downloader(DownloadOptions(**FAST)).download(server.url("a.mp4"), str(tmp_path / "out"))
    assert time.monotonic() - started >= 0.95  # honoured Retry-After, not the 0.05 s backoff
    assert done.attempts == 2
    assert server.body_requests("a.mp4")[0] == "429"


def test_retry_after_longer_than_max_wait_gives_up_at_once_as_transient(server, tmp_path):
    server.plan["/videos/a.mp4"] = ["429"]
    server.retry_after = "3600"
    with pytest.raises(TransientFailure) as info:
        Downloader(DownloadOptions(**FAST, max_wait_s=5)).download(server.url("a.mp4"), str(tmp_path / "o"))
    assert info.value.reason == "rate_limited" and "max_wait_s" in info.value.detail


def test_faults_that_persist_become_transient_failures_after_the_retries(server, tmp_path):
    server.plan["/videos/a.mp4"] = ["503"] * 10
    with pytest.raises(TransientFailure) as info:
        Downloader(DownloadOptions(**{**FAST, "retries": 2})).download(server.url("a.mp4"), str(tmp_path / "o"))
    assert info.value.reason == "server_error" and "after 3 tries" in info.value.detail
    assert server.body_requests("a.mp4") == ["503"] * 3


def test_a_response_slower_than_the_socket_timeout_is_transient(server, tmp_path):
    server.plan["/videos/a.mp4"] = [("slow", 1.5)]
    options = DownloadOptions(**{**FAST, "retries": 0, "socket_timeout_s": 0.5})
    with pytest.raises(TransientFailure) as info:
        Downloader(options).download(server.url("a.mp4"), str(tmp_path / "o"))
    assert info.value.reason == "network"


@pytest.mark.parametrize("code, reason", [("404", "removed"), ("403", "forbidden")])
def test_permanent_http_errors_are_not_retried(server, tmp_path, code, reason):
    server.plan["/videos/a.mp4"] = [code] * 5
    with pytest.raises(PermanentFailure) as info:
        Downloader(DownloadOptions(**FAST)).download(server.url("a.mp4"), str(tmp_path / "o"))
    assert info.value.reason == reason
    assert len(server.body_requests("a.mp4")) == 1


def test_search_lists_candidates_deduplicated(server):
    server.search_results["boxing drills"] = ["a.mp4", "b.mp4", "a.mp4"]
    found = Downloader(DownloadOptions(**FAST)).search(f"{server.base}/search?q={{query}}&n={{n}}",
                                                       "boxing drills", 5)
    assert [c.url for c in found] == [server.url("a.mp4"), server.url("b.mp4")]


def test_format_selector_caps_height_prefers_mp4_never_merges_and_runs_no_external_program():
    import yt_dlp

    selector = DownloadOptions(max_height=720).format_selector()
    first = selector.split("/")[0]
    assert first.startswith("bv*[height<=?720]") and first.endswith("[ext=mp4]")
    assert "+" not in selector  # a merge would need ffmpeg and an audio stream we do not want
    choose = yt_dlp.YoutubeDL({"quiet": True}).build_format_selector(selector)

    def offered(*protocols):
        return {"formats": [{"format_id": p, "protocol": p, "url": "x", "ext": "mp4", "vcodec": "h264",
                             "acodec": "none", "height": 480} for p in protocols],
                "has_merged_format": False, "incomplete_formats": False}

    # rtmp / rtsp / mms would run rtmpdump or ffmpeg, which connect outside the network policy
    assert [f["format_id"] for f in choose(offered("rtmp", "https", "rtsp"))] == ["https"]
    assert list(choose(offered("rtmp", "rtsp", "mms"))) == []


# Classification of yt-dlp's messages ------------------------------------------------------------------------
@pytest.mark.parametrize("message, kind, reason", [
    ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access", PermanentFailure, "private"),
    ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", PermanentFailure,
     "removed"),
    ("ERROR: [youtube] abc: The uploader has not made this video available in your country", PermanentFailure,
     "geo_blocked"),
    ("ERROR: [youtube] abc: Sign in to confirm your age. This video may be inappropriate", PermanentFailure,
     "age_restricted"),
    ("ERROR: Unsupported URL: https://example.invalid/x", PermanentFailure, "unsupported"),
    ("ERROR: [download] Requested format is not available", PermanentFailure, "no_format"),
    ("ERROR: Unable to download webpage: HTTP Error 429: Too Many Requests", TransientFailure, "rate_limited"),
    ("ERROR: [download] Got error: 1498 bytes read, 1498 more expected", TransientFailure, "truncated"),
    ("ERROR: Unable to download webpage: The read operation timed out", TransientFailure, "network"),
    ("ERROR: something nobody has seen", TransientFailure, "unknown"),
])
def test_classify_messages(message, kind, reason):
    from yt_dlp.utils import DownloadError

    failure = classify(DownloadError(message))
    assert isinstance(failure, kind) and failure.reason == reason


def test_retry_after_accepts_seconds_and_http_dates(monkeypatch):
    assert retry_after("7") == 7.0 and retry_after(" 2.5 ") == 2.5 and retry_after("-3") == 0.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert retry_after("soon") is None and retry_after(None) is None and retry_after("Wed, 99 Oct 2015") is None
    ahead = time.time() + 60
    # A date is UTC whatever the machine's zone, also in the zone-less `-0000` form.
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        for header in (email.utils.formatdate(ahead, usegmt=True), email.utils.formatdate(ahead)):
            assert 55 < retry_after(header) <= 60, header
    finally:
        monkeypatch.undo()
        time.tzset()


def test_dedup_key_uses_extractor_ids_but_hashes_generic_urls():
    assert dedup_key("Youtube", "dQw4w9WgXcQ", "https://youtu.be/x") == "youtube-dqw4w9wgxcq"
    assert dedup_key("Generic", "video", "http://a/video.mp4") != dedup_key("Generic", "video", "http://b/video.mp4")


# The stage ---------------------------------------------------------------------------------------------------
def test_limits_reject_before_any_body_is_fetched(server, tmp_path):
    stage = make_stage(tmp_path / "run", max_filesize_mb=0.000001)
    record = stage.process({"input_id": server.url("a.mp4"), "download_query": server.url("a.mp4")})[0]
    assert record["status"] == "rejected" and record["reason"] == "too_large"


def test_stage_records_transient_errors_and_permanent_rejections_per_video(server, tmp_path):
    server.search_results["q"] = ["a.mp4", "b.mp4", "c.mp4"]
    server.plan["/videos/b.mp4"] = ["404"] * 5
    server.plan["/videos/c.mp4"] = ["503"] * 20
    stage = make_stage(tmp_path / "run", search=f"{server.base}/search?q={{query}}", retries=1)
    item = {"input_id": "k1", "keyword_id": "k1", "keyword_text": "q", "keyword_category": "Combat Sports",
            "keyword_fine_category": "Boxing"}
    records = {r["download_webpage"].rsplit("/", 1)[-1]: r for r in stage.process(item)}
    a, b, c = records["a.mp4"], records["b.mp4"], records["c.mp4"]
    assert a["status"] == "ok" and a["id"] == ids.video_id_from_file(a["download_path"])
    assert (a["keyword_id"], a["download_keyword"], a["download_category"], a["download_subcategory"]) == \
        ("k1", "q", "Combat Sports", "Boxing")
    assert b["status"] == "rejected" and b["reason"] == "removed"
    assert c["status"] == "error" and c["error_type"] == "TransientFailure.server_error"


def test_a_copied_run_dir_uses_its_own_stored_video_not_the_one_it_was_copied_from(server, tmp_path):
    server.search_results["q"] = ["a.mp4"]
    item = {"input_id": "k1", "keyword_id": "k1", "keyword_text": "q"}
    search = f"{server.base}/search?q={{query}}"
    [first] = make_stage(tmp_path / "run", search=search).process(item)
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    server.plan["/videos/a.mp4"] = ["404"] * 5  # a second download would be refused: the stored video must be used
    [again] = make_stage(tmp_path / "copy", search=search).process(item)
    assert again["status"] == "ok" and again["id"] == first["id"]
    name = Path(first["download_path"]).name
    assert again["download_path"] == str(tmp_path / "copy" / "artifacts" / "download" / name)


def _pipeline(tmp_path, stages: list[dict]) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "run": {"max_attempts": 2, "executor": "local"},
                                    "stages": stages}))
    return str(path)


def test_keywords_download_ingest_pipeline_dedups_by_extractor_id_and_hands_on_keywords(server, tmp_path):
    """keywords (template) → download (search on the local server) → ingest: the same video found by two
    keywords is fetched once and reads as a duplicate; ingest probes the downloaded file with its keyword."""
    from humove.stages.keywords import KeywordsConfig, KeywordsStage

    stage = KeywordsStage(KeywordsConfig(backend="template", categories=["Combat Sports"], keywords_per_category=2),
                          StageContext(str(tmp_path), "keywords"))
    stage.setup()
    first, second = (r["keyword_text"] for r in stage.process(stage.list_inputs()[0]))
    server.search_results[first] = ["a.mp4", "b.mp4"]
    server.search_results[second] = ["b.mp4"]
    server.plan["/videos/a.mp4"] = ["503", "truncate"]  # recovered within the stage
    pipeline = _pipeline(tmp_path, [
        {"stage": "keywords",
         "config": {"backend": "template", "categories": ["Combat Sports"], "keywords_per_category": 2}},
        # One thread: the two keywords in turn, so the second finds "b.mp4" stored. (With threads, it may probe
        # "b.mp4" while the first still downloads it, then wait for it: one more request, the body still once.)
        {"stage": "download", "config": {**FAST, "search": f"{server.base}/search?q={{query}}",
                                         "download_threads": 1}},
        {"stage": "ingest", "config": {"min_duration_s": 0.1, "min_side_px": 16}},
    ])
    config, stages = load_pipeline(pipeline)
    run_dir = str(tmp_path / "run")
    Runner(config, stages, run_dir, executor="local").run()
    tables = Ledger(run_dir).current()
    downloads = tables["download"].to_pylist()
    assert sorted((r["download_keyword"], r["status"], r["reason"]) for r in downloads) == sorted(
        [(first, "ok", None), (first, "ok", None), (second, "rejected", "duplicate")])
    assert server.body_requests("b.mp4") == ["ok", "ok"]  # metadata + body once; found again: no request
    from humove.collect.report import keyword_summary
    from humove.report.data import download_outcomes

    assert [(c["category"], c["keywords"]) for c in keyword_summary(tables["keywords"])["categories"]] == [
        ("Combat Sports", 2)]
    assert [(o["outcome"], o["videos"]) for o in download_outcomes(tables["download"])["outcomes"]] == [
        ("ok", 2), ("rejected: duplicate", 1)]
    ingest = tables["ingest"].filter(pc.equal(tables["ingest"]["status"], "ok")).to_pylist()
    assert len(ingest) == 2
    by_id = {r["id"]: r for r in downloads if r["status"] == "ok"}
    for row in ingest:
        assert row["id"] in by_id  # the same content hash: ingest joins back to its download
        assert (row["keyword"], row["category"], row["source"]) == (first, "Combat Sports", "Generic")
        assert row["source_path"] == by_id[row["id"]]["download_path"]


def test_url_list_source_feeds_ingest_with_manifest_annotations(server, tmp_path):
    manifest = tmp_path / "urls.csv"
    manifest.write_text("url,keyword,category,licence\n"
                        f"{server.url('a.mp4')},parkour,Urban & Outdoor,CC-BY\n"
                        f"{server.url('missing.mp4')},parkour,Urban & Outdoor,CC-BY\n")
    pipeline = _pipeline(tmp_path, [
        {"stage": "download", "config": {**FAST, "source": str(manifest)}},
        {"stage": "ingest", "config": {"min_duration_s": 0.1, "min_side_px": 16}},
    ])
    config, stages = load_pipeline(pipeline)
    run_dir = str(tmp_path / "run")
    Runner(config, stages, run_dir, executor="local").run()
    tables = Ledger(run_dir).current()
    outcomes = sorted((r["status"], r["reason"]) for r in tables["download"].to_pylist())
    assert outcomes == [("ok", None), ("rejected", "removed")]
    (row,) = tables["ingest"].to_pylist()
    assert (row["status"], row["keyword"], row["category"], row["licence"]) == ("ok", "parkour", "Urban & Outdoor",
                                                                                "CC-BY")


def test_urls_pipeline_file_names_download_then_ingest():
    config, stages = load_pipeline("pipelines/urls.yaml")
    assert [s.name for s in stages][:2] == ["download", "ingest"]


def test_builtin_demo_search_fetches_file_urls_offline(tmp_path, monkeypatch):
    """`search: builtin:demo-videos` (the offline demo): every query finds the demo videos, fetched by yt-dlp from
    file:// URLs. The demo renderer is replaced by two small fixture videos to keep this test fast."""
    import humove.samples

    def two_videos(folder):
        import os

        os.makedirs(folder, exist_ok=True)
        return [write_video(os.path.join(folder, f"demo_{i}.mp4"), frames=20 + i) for i in range(2)]

    monkeypatch.setattr(humove.samples, "write_demo_videos", two_videos)
    stage = make_stage(tmp_path / "run", search="builtin:demo-videos", allowed_schemes=["http", "https", "file"])
    records = stage.process({"input_id": "k", "keyword_id": "k", "keyword_text": "walking"})
    assert [(r["status"], r["download_extractor"]) for r in records] == [("ok", "Generic"), ("ok", "Generic")]
    assert all(r["download_webpage"].startswith("file://") for r in records)
    assert all(r["id"] == ids.video_id_from_file(r["download_path"]) for r in records)


def test_demo_videos_for_an_object_store_run_dir_are_rendered_in_a_private_folder_removed_after(
        tmp_path, monkeypatch):
    """Before, a run dir on an object store rendered the demo videos into /tmp/humove-demo, shared by every user of
    the machine and kept: another user could put their own files there first, and the run would publish them."""
    import stat

    import humove.samples

    rendered_into = []

    def two_videos(folder):
        import os

        rendered_into.append(folder)
        os.makedirs(folder, exist_ok=True)
        return [write_video(os.path.join(folder, f"demo_{i}.mp4"), frames=20 + i) for i in range(2)]

    monkeypatch.setattr(humove.samples, "write_demo_videos", two_videos)
    stage = make_stage("memory://humove-demo-test/run", search="builtin:demo-videos",
                       allowed_schemes=["http", "https", "file"])
    records = stage.process({"input_id": "k", "keyword_id": "k", "keyword_text": "walking"})
    assert [r["status"] for r in records] == ["ok", "ok"]
    stage.process({"input_id": "k2", "keyword_id": "k2", "keyword_text": "running"})
    (folder,) = set(rendered_into)  # one folder per worker, rendered into for every query
    assert Path(folder).name.startswith("humove-download-") and stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    del stage
    import gc

    gc.collect()
    assert not Path(folder).exists()


def test_a_playlist_url_is_rejected_not_downloaded(server, tmp_path):
    server.search_results["list"] = ["a.mp4", "b.mp4"]
    with pytest.raises(PermanentFailure) as info:
        Downloader(DownloadOptions(**FAST)).download(f"{server.base}/search?q=list", str(tmp_path / "o"))
    assert info.value.reason == "playlist" and server.body_requests("a.mp4") == []


# Network policy: only public addresses, only allowed schemes ----------------------------------------------------
HOSTILE = Path(__file__).parent / "hostile" / "download"


def test_hostile_url_list_is_refused_item_by_item_before_any_request(tmp_path):
    """Every URL of the hostile list (loopback, private, link-local, metadata, multicast, reserved, IPv4-mapped,
    6to4, NAT64, decimal/hex/octal forms, non-http schemes) gets its rejection at once, none is retried, and the
    password one of them carries reaches no file of the run dir."""
    manifest = HOSTILE / "urls.csv"
    expected = {row["url"]: row["expected_reason"] for row in csv.DictReader(manifest.open())}
    pipeline = _pipeline(tmp_path, [{"stage": "download", "config": {
        **FAST, "allow_private_networks": False, "source": str(manifest)}}])
    config, stages = load_pipeline(pipeline)
    run_dir = tmp_path / "run"
    started = time.monotonic()
    Runner(config, stages, str(run_dir), executor="local").run()
    assert time.monotonic() - started < 30  # refused before connecting: no timeouts, no retries
    records = Ledger(str(run_dir)).current()["download"].to_pylist()
    assert len(records) == len(expected)
    by_query = {r["download_query"]: r for r in records}
    for url, reason in expected.items():
        record = by_query[redact_text(url)]
        assert (record["status"], record["reason"], record["attempt"]) == ("rejected", reason, 1), url
    assert not any(b"hunter2" in path.read_bytes() for path in run_dir.rglob("*") if path.is_file())


def _resolving(monkeypatch, names: dict[str, list[str]]):
    """A fake DNS for this process: each name in `names` resolves to its next address (the last one repeats)."""
    real = socket.getaddrinfo
    answers = {name: list(addresses) for name, addresses in names.items()}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        queue = answers[host]
        address = queue.pop(0) if len(queue) > 1 else queue[0]
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("target", ["{base}/videos/a.mp4", "http://localhost:{port}/videos/a.mp4",
                                    "http://[::ffff:127.0.0.1]:{port}/videos/a.mp4",
                                    "http://videos.example.com:{port}/videos/a.mp4"])
def test_a_url_that_resolves_to_a_private_address_is_refused(server, tmp_path, monkeypatch, target):
    _resolving(monkeypatch, {"videos.example.com": ["127.0.0.1"]})
    url = target.format(base=server.base, port=server.port)
    stage = make_stage(tmp_path / "run", allow_private_networks=False)
    (record,) = stage.process({"input_id": url, "download_query": url})
    assert (record["status"], record["reason"]) == ("rejected", "blocked_address")
    assert "127.0.0.1" in record["detail"] and server.log == []


@pytest.fixture
def public_server(server, monkeypatch):
    """A second server on 127.0.0.2 that the policy takes for a public address (a fake classifier: every other
    address, the first server's 127.0.0.1 included, stays private)."""
    from humove.collect import netguard

    monkeypatch.setattr(netguard, "is_public", lambda address: address == "127.0.0.2")
    public = VideoServer(host="127.0.0.2")
    public.files.update(server.files)
    yield public
    public.close()


def test_a_redirect_to_a_private_address_is_refused(server, public_server, tmp_path):
    public_server.plan["/videos/a.mp4"] = [("redirect", server.url("a.mp4"))] * 2
    stage = make_stage(tmp_path / "run", allow_private_networks=False)
    (record,) = stage.process({"input_id": "x", "download_query": public_server.url("a.mp4")})
    assert (record["status"], record["reason"]) == ("rejected", "blocked_address")
    assert public_server.log[0] == ("/videos/a.mp4", "redirect") and server.log == []


def test_a_video_embedded_in_a_page_is_refused_when_it_is_private(server, public_server, tmp_path):
    public_server.pages["embed.html"] = f'<html><body><video src="{server.url("a.mp4")}"></video></body></html>'
    stage = make_stage(tmp_path / "run", allow_private_networks=False)
    (record,) = stage.process({"input_id": "x", "download_query": f"{public_server.base}/pages/embed.html"})
    assert (record["status"], record["reason"]) == ("rejected", "blocked_address")
    assert public_server.log == [("/pages/embed.html", "ok")] and server.log == []


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_name_that_turns_private_between_check_and_connect_is_refused_at_the_socket(server, public_server,
                                                                                       tmp_path, monkeypatch, scheme):
    """DNS rebinding: the name is public when the policy resolves it, private when the connection does; the
    address actually connected to is checked before a byte is sent (for https, before the TLS handshake)."""
    from humove.collect import netguard

    monkeypatch.setattr(netguard, "resolve", lambda host, port: {"127.0.0.2"})
    _resolving(monkeypatch, {"rebind.example.com": ["127.0.0.1"]})
    url = f"{scheme}://rebind.example.com:{server.port}/videos/a.mp4"
    stage = make_stage(tmp_path / "run", allow_private_networks=False)
    (record,) = stage.process({"input_id": url, "download_query": url})
    assert (record["status"], record["reason"]) == ("rejected", "blocked_address")
    assert "rebind.example.com resolves to 127.0.0.1" in record["detail"] and server.log == []


def test_allow_private_networks_lifts_the_refusal(server, public_server, tmp_path):
    public_server.plan["/videos/a.mp4"] = [("redirect", server.url("a.mp4"))] * 2
    public_server.pages["embed.html"] = f'<html><body><video src="{server.url("b.mp4")}"></video></body></html>'
    stage = make_stage(tmp_path / "run", allow_private_networks=True)
    for url in (server.url("c.mp4"), public_server.url("a.mp4"), f"{public_server.base}/pages/embed.html"):
        (record,) = stage.process({"input_id": url, "download_query": url})
        assert record["status"] == "ok", record


def test_only_allowed_schemes_are_fetched(server, tmp_path):
    video = tmp_path / "local.mp4"
    video.write_bytes(server.files["a.mp4"])
    refused = make_stage(tmp_path / "run", allowed_schemes=["https"])
    for url in (server.url("a.mp4"), video.as_uri()):
        (record,) = refused.process({"input_id": url, "download_query": url})
        assert (record["status"], record["reason"]) == ("rejected", "scheme_not_allowed"), url
    assert server.log == []
    allowed = make_stage(tmp_path / "run", allowed_schemes=["http", "https", "file"])
    (record,) = allowed.process({"input_id": video.as_uri(), "download_query": video.as_uri()})
    assert record["status"] == "ok"
    for missing in ((tmp_path / "missing.mp4").as_uri(), tmp_path.as_uri()):  # refused, not retried
        (record,) = allowed.process({"input_id": missing, "download_query": missing})
        assert (record["status"], record["reason"]) == ("rejected", "missing_file"), missing


def test_address_classification():
    from humove.collect.netguard import is_public

    private = ["127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
               "0.0.0.0", "224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1", "192.0.2.1", "::1", "::",
               "fe80::1", "fd12:3456::1", "ff02::1", "ff0e::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
               "::127.0.0.1", "2002:7f00:1::1", "2002:a00:1::1", "64:ff9b::a00:1", "2001:db8::1", "fe80::1%eth0"]
    public = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8",
              "2002:808:808::1", "64:ff9b::808:808"]
    assert [a for a in private if is_public(a)] == []
    assert [a for a in public if not is_public(a)] == []


# Secrets and the user's files --------------------------------------------------------------------------------
def test_the_users_cookies_file_is_read_never_written(server, tmp_path):
    """Several downloads at once, each with the cookies: they reach the server, the file keeps its bytes and
    mtime (yt-dlp would rewrite it, and concurrent threads raced on it)."""
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tabc123\n")
    os.utime(cookies, (1_000_000_000, 1_000_000_000))
    before = cookies.read_bytes()
    stage = make_stage(tmp_path / "run", cookies_file=str(cookies), download_threads=3, per_host_concurrency=3)
    items = [{"input_id": url, "download_query": url} for url in map(server.url, ("a.mp4", "b.mp4", "c.mp4"))]
    results = stage.process_batch(items)
    assert [records[0]["status"] for records in results] == ["ok"] * 3
    assert server.cookies and all(cookie == "session=abc123" for cookie in server.cookies)
    assert cookies.read_bytes() == before and cookies.stat().st_mtime == 1_000_000_000


@pytest.mark.parametrize("text, says", [
    ("# Netscape HTTP Cookie File\n.example.com\tTRUE\t/\tFALSE\tnever\tsid\tS3CRETVALUE\n", "lines [2]"),
    ('[{"name": "sid", "value": "S3CRETVALUE"}]', "lines [1]"),
    ("sid=S3CRETVALUE\n", "lines [1]"),
    ("example.com\tTRUE\t/\tFALSE\t0\tsid\tS3CRETVALUE\n", "not a Netscape cookies file"),
])
def test_a_malformed_cookies_file_is_refused_without_quoting_a_cookie(tmp_path, text, says):
    cookies = tmp_path / "cookies.txt"
    cookies.write_text(text)
    with pytest.raises(ValueError) as info:
        make_stage(tmp_path / "run", cookies_file=str(cookies))
    assert str(cookies) in str(info.value) and says in str(info.value)
    assert "S3CRET" not in "".join(traceback.format_exception(info.value))  # nor in what --debug prints


def test_credentials_reach_no_file_output_or_fingerprint(server, tmp_path):
    """`--set download.proxy=http://user:pw@host:port` and a listed URL with a password: neither password is in
    any file of the run dir (records, stage state, report) nor on the terminal; both show as `user:***@host`."""
    from typer.testing import CliRunner

    from humove.cli import app
    from humove.engine import stage_fingerprints

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port nothing listens on: the proxy refuses every connection
    proxy = f"http://proxyuser:Pr0xyPw9@127.0.0.1:{closed.getsockname()[1]}"
    listed = tmp_path / "urls.txt"
    listed.write_text(f"http://viewer:L1stPw7@127.0.0.1:{server.port}/videos/a.mp4\n")
    pipeline = _pipeline(tmp_path, [{"stage": "download", "config": {**FAST, "retries": 0, "source": str(listed)}}])
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", pipeline, "--run-dir", str(run_dir), "--executor", "local",
                                      "--set", f"download.proxy={proxy}"])
    closed.close()
    assert result.exit_code == 0, result.output
    files = [path for path in run_dir.rglob("*") if path.is_file()]
    assert any(path.name == "report.html" for path in files)
    for secret in ("Pr0xyPw9", "L1stPw7"):
        assert secret not in result.output
        assert [path for path in files if secret.encode() in path.read_bytes()] == []
    state = json.loads((run_dir / "download" / "_stage.json").read_text())
    assert state["config"]["proxy"] == proxy.replace("Pr0xyPw9", "***")
    (record,) = Ledger(str(run_dir)).current()["download"].to_pylist()
    assert record["input_id"] == f"http://viewer:***@127.0.0.1:{server.port}/videos/a.mp4"
    config, stages = load_pipeline(pipeline, [f"download.proxy={proxy}"])
    _, other = load_pipeline(pipeline, [f"download.proxy={proxy.replace('Pr0xyPw9', 'another')}"])
    assert stage_fingerprints(stages) == stage_fingerprints(other)
