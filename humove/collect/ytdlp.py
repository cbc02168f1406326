"""yt-dlp search and download (its Python API), with the politeness and failure handling a crawl needs.

- `search(query, n)`: candidates for a keyword (`ytsearch{n}:{query}` by default; any extractor or URL template).
- `Downloader.download(url)`: metadata first (duration, size, availability checked before any byte is fetched),
  then the file: best video-only-or-muxed format up to `max_height`, mp4 preferred, no audio needed (no merge,
  so no ffmpeg). yt-dlp's own retries are off: this module retries with exponential backoff, honours
  `429 Retry-After`, spaces requests per host and caps concurrent downloads per host (per process: a Ray stage
  with k workers sends at most k × that), checks the file's size against what the server announced.
- Failures are classified: `TransientFailure` (retry later: 429, 5xx, network, truncated bodies) or
  `PermanentFailure(reason)` (private, removed, geo_blocked, age_restricted, members_only, login_required,
  too_long, too_large, no_format, unsupported, live, forbidden, playlist, missing_file, blocked_address,
  scheme_not_allowed).
- Untrusted URLs: every request yt-dlp makes passes the network policy (`humove.collect.netguard`: public
  addresses only, http(s) only, unless the options allow more); only formats yt-dlp fetches itself are chosen,
  never an external program (ffmpeg, rtmpdump) that would connect unchecked. The user's cookies file is read
  once, and each yt-dlp instance gets its own copy in memory: the file is never written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import hashlib
import io
import os
import re
import threading
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from humove.collect.netguard import NetworkPolicy, Refused
from humove.redact import redact_text
from humove.stage import secret

PERMANENT_PATTERNS = (  # (reason, regex on yt-dlp's message), first match wins
    ("private", r"private video|this video is private|is private"),
    ("geo_blocked", r"available in your country|geo.?restrict|not available from your location"),
    ("age_restricted", r"confirm your age|age.?restricted|inappropriate for some users"),
    ("members_only", r"members.only|join this channel"),
    ("login_required", r"sign in|login required|requires authentication|cookies.*required"),
    ("removed", r"video unavailable|has been removed|no longer available|does not exist|account .* terminated"
                r"|copyright claim|http error 404|http error 410"),
    ("live", r"is live|live event|premieres in"),
    ("no_format", r"requested format is not available|no video formats found"),
    ("unsupported", r"unsupported url|ffmpeg could not be found"),
    ("forbidden", r"http error 403"),
    ("missing_file", r"no such file or directory|is a directory"),  # a file:// URL (when allowed)
)
# Protocols whose downloaders fetch through yt-dlp's request handlers (so through the network policy); others
# (rtmp, rtsp, mms, …) would run an external program.
FETCHED_PROTOCOLS = "[protocol~='^(https?|file|http_dash_segments(_generator)?|m3u8(_native)?)$']"
# yt-dlp runs without ffmpeg: an HLS stream its native downloader cannot handle would go to an ffmpeg child, which
# connects unchecked. A location that does not exist is yt-dlp's documented "continue without ffmpeg".
NO_FFMPEG = os.path.join(os.sep, "nonexistent", "humove-downloads-run-without-ffmpeg")
TRANSIENT_PATTERNS = (
    ("rate_limited", r"http error 429|too many requests"),
    ("server_error", r"http error 5\d\d"),
    ("truncated", r"bytes read, \d+ more expected|content too short|incomplete"),
    ("network", r"timed out|connection|remote end closed|reset by peer|temporary failure|transport"),
)


class DownloadFailure(Exception):
    def __init__(self, reason: str, detail: str, retry_after_s: float | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retry_after_s = reason, detail, retry_after_s


class TransientFailure(DownloadFailure):
    """Worth retrying later (rate limits, server errors, network, truncated bodies)."""


class PermanentFailure(DownloadFailure):
    """Retrying will not help; `reason` is machine-readable."""


class DownloadOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_height: int = Field(1080, ge=144, description="tallest video format to fetch")
    prefer_mp4: bool = True
    max_duration_s: float | None = Field(900.0, description="reject longer videos (too_long) before fetching")
    max_filesize_mb: float | None = Field(1024.0, description="reject larger files (too_large)")
    retries: int = Field(4, ge=0, description="tries after the first, per video, within the stage")
    backoff_s: float = Field(2.0, ge=0.0, description="first backoff; doubles each retry")
    max_wait_s: float = Field(120.0, ge=0.0, description="a longer Retry-After or backoff ends the tries: the "
                                                         "engine retries the item later")
    socket_timeout_s: float = Field(30.0, gt=0.0)
    per_host_concurrency: int = Field(2, ge=1, description="downloads in flight per host, per worker")
    per_host_interval_s: float = Field(1.0, ge=0.0, description="minimum spacing of request starts per host")
    ratelimit_bytes_per_s: int | None = Field(None, description="yt-dlp's bandwidth cap per download")
    cookies_file: str | None = Field(None, description="Netscape cookies.txt for sites that need a login; read, "
                                                       "never written")
    proxy: str | None = secret(None, "proxy URL (http, https, socks5); its password is never written")
    allow_private_networks: bool = Field(False, description="allow loopback, private, link-local and other "
                                                            "non-public addresses (a local test server, an intranet)")
    allowed_schemes: list[Literal["http", "https", "file"]] = Field(
        ["http", "https"], min_length=1, description="URL schemes that may be fetched (add file for local files)")

    def format_selector(self) -> str:
        """Video-only or muxed formats up to `max_height` (unknown heights allowed), mp4 first; never a merge;
        only protocols yt-dlp fetches itself (`FETCHED_PROTOCOLS`)."""
        height = f"[height<=?{self.max_height}]{FETCHED_PROTOCOLS}"
        mp4 = "[ext=mp4]" if self.prefer_mp4 else ""
        choices = [f"bv*{height}{mp4}", f"bv*{height}", f"b{height}{mp4}", f"b{height}"]
        return "/".join(dict.fromkeys(choices))

    def network_policy(self) -> NetworkPolicy:
        return NetworkPolicy(frozenset(self.allowed_schemes), self.allow_private_networks)


@dataclass(frozen=True)
class Candidate:
    """A search result or listed URL, before download."""

    url: str
    extractor: str | None = None
    extractor_id: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class Downloaded:
    path: str                     # local file
    url: str
    webpage: str
    extractor: str
    extractor_id: str
    title: str | None
    uploader: str | None
    duration_s: float | None
    licence: str | None
    format: str | None
    width: int | None
    height: int | None
    num_bytes: int
    attempts: int


def dedup_key(extractor: str | None, extractor_id: str | None, url: str) -> str:
    """The identity of a video across searches: `<extractor>-<id>`, file-name safe. The generic extractor's ids
    are file names (not unique across sites), so its key hashes the URL instead (without its password)."""
    if not extractor or not extractor_id or extractor.lower() == "generic":
        return "url-" + hashlib.sha256(redact_text(url.strip()).encode()).hexdigest()[:16]
    safe = re.sub(r"[^0-9a-z_-]+", "_", f"{extractor}-{extractor_id}".lower()).strip("_")
    return safe[:120]


class HostLimiter:
    """Per-host politeness inside one process: at most `concurrency` downloads in flight per host, request
    starts spaced by `interval_s`, and a host-wide pause after a 429 (Retry-After) that all threads respect."""

    def __init__(self, concurrency: int, interval_s: float):
        self.interval_s = interval_s
        self._semaphores: dict[str, threading.BoundedSemaphore] = defaultdict(
            lambda: threading.BoundedSemaphore(concurrency))
        self._next_start: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self, url: str):
        host = host_of(url)
        with self._lock:
            semaphore = self._semaphores[host]
        with semaphore:
            self.wait_turn(host)
            yield

    def wait_turn(self, host: str) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start[host])
            self._next_start[host] = start + self.interval_s
        if start > now:
            time.sleep(start - now)

    def pause(self, url: str, seconds: float) -> None:
        """No new request to this host for `seconds` (a 429's Retry-After)."""
        host = host_of(url)
        with self._lock:
            self._next_start[host] = max(self._next_start[host], time.monotonic() + seconds)


def host_of(url: str) -> str:
    if url.startswith("ytsearch") or "://" not in url:
        return "youtube.com"  # search prefixes address YouTube
    return urllib.parse.urlsplit(url).hostname or url


def classify(exc: BaseException) -> DownloadFailure:
    """A yt-dlp exception as a transient or permanent failure with a reason."""
    if isinstance(exc, DownloadFailure):
        return exc
    from yt_dlp.utils import GeoRestrictedError

    cause = exc.exc_info[1] if getattr(exc, "exc_info", None) else None
    message = str(exc)
    if isinstance(exc, GeoRestrictedError) or isinstance(cause, GeoRestrictedError):
        return PermanentFailure("geo_blocked", message)
    status = getattr(cause, "status", None)
    if isinstance(status, int):
        if status == 429:
            headers = getattr(getattr(cause, "response", None), "headers", {}) or {}
            return TransientFailure("rate_limited", message, retry_after(headers.get("Retry-After")))
        if status >= 500:
            return TransientFailure("server_error", message)
        if status in (404, 410):
            return PermanentFailure("removed", message)
        if status == 403:
            return PermanentFailure("forbidden", message)
        if status == 401:
            return PermanentFailure("login_required", message)
    lowered = message.lower()
    for reason, pattern in TRANSIENT_PATTERNS[:3]:  # HTTP status texts before the broad permanent patterns
        if re.search(pattern, lowered):
            return TransientFailure(reason, message)
    for reason, pattern in PERMANENT_PATTERNS:
        if re.search(pattern, lowered):
            return PermanentFailure(reason, message)
    for reason, pattern in TRANSIENT_PATTERNS[3:]:
        if re.search(pattern, lowered):
            return TransientFailure(reason, message)
    return TransientFailure("unknown", message)  # unknown: let the engine retry, then quarantine


def retry_after(value) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (a date without a zone, `-0000`, is
    UTC as HTTP dates are); 0 for a date in the past, None when absent or unreadable. The one parser of the
    download path (the LLM client's SDK has its own)."""
    if value is None:
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - time.time())


class Downloader:
    """Search and download with one set of options; thread-safe (one per worker, shared by its threads)."""

    def __init__(self, options: DownloadOptions, sleep=time.sleep):
        self.options = options
        self.policy = options.network_policy()
        self.limiter = HostLimiter(options.per_host_concurrency, options.per_host_interval_s)
        self._sleep = sleep
        self._cookies = read_cookies(options.cookies_file) if options.cookies_file else None

    def ydl_params(self, outdir: str | None = None) -> dict:
        o = self.options
        params = {
            "quiet": True, "no_warnings": True, "noprogress": True, "noplaylist": True,
            "retries": 0, "fragment_retries": 0, "extractor_retries": 0, "file_access_retries": 0,
            "socket_timeout": o.socket_timeout_s, "format": o.format_selector(),
            "outtmpl": os.path.join(outdir or ".", "%(id).80B.%(ext)s"), "restrictfilenames": True,
            "overwrites": True, "continuedl": False, "enable_file_urls": "file" in o.allowed_schemes,
            "writesubtitles": False, "writethumbnail": False, "logger": _QuietLogger(),
            "external_downloader": {"default": "native"}, "ffmpeg_location": NO_FFMPEG,
        }
        if o.ratelimit_bytes_per_s:
            params["ratelimit"] = o.ratelimit_bytes_per_s
        if self._cookies is not None:  # this instance's own copy: yt-dlp saves its cookies into it, not the file
            params["cookiefile"] = io.StringIO(self._cookies)
        if o.proxy:
            params["proxy"] = o.proxy
        return params

    # Search ----------------------------------------------------------------------------------------------
    def search(self, template: str, query: str, count: int) -> list[Candidate]:
        """Candidates for `query`: `template` is a yt-dlp search prefix (`ytsearch{n}:{query}`) or any URL with
        `{query}` (URL-encoded) and `{n}`. Deduplicated by extractor id, in result order."""
        target = template.format(n=count, query=urllib.parse.quote_plus(query) if "://" in template else query)
        info = self._with_retries(target, lambda ydl: ydl.extract_info(target, download=False),
                                  {"extract_flat": "in_playlist", "noplaylist": False})[0]
        entries = info.get("entries") if info.get("_type") in ("playlist", "multi_video") else [info]
        candidates: dict[str, Candidate] = {}
        for entry in list(entries or [])[:count]:
            if not entry:
                continue
            url = entry.get("webpage_url") if entry.get("webpage_url") not in (None, target) else None
            url = url or entry.get("url") or entry.get("original_url")
            if not url:
                continue
            extractor = entry.get("ie_key")  # the extractor that will handle the URL (None: not known yet)
            key = dedup_key(extractor, entry.get("id"), url)
            candidates.setdefault(key, Candidate(url=url, extractor=extractor, extractor_id=entry.get("id"),
                                                 title=entry.get("title")))
        return list(candidates.values())

    # Download --------------------------------------------------------------------------------------------
    def probe(self, url: str) -> tuple[dict, int]:
        """Metadata without downloading, and the tries it took; raises PermanentFailure for too long / too large
        / live videos, and for a URL the network policy refuses."""
        check_url(self.policy, url)
        info, attempts = self._with_retries(url, lambda ydl: ydl.extract_info(url, download=False))
        self.check_limits(info)
        return info, attempts

    def check_limits(self, info: dict) -> None:
        o = self.options
        if info.get("_type") in ("playlist", "multi_video"):
            raise PermanentFailure("playlist", "the URL is a playlist or channel: list its videos' URLs instead")
        duration = info.get("duration")
        if o.max_duration_s is not None and duration and duration > o.max_duration_s:
            raise PermanentFailure("too_long", f"{duration:.0f} s > max_duration_s {o.max_duration_s:.0f}")
        if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
            raise PermanentFailure("live", f"live status {info.get('live_status') or 'is_live'}")
        size = info.get("filesize") or info.get("filesize_approx")
        if o.max_filesize_mb is not None and size and size > o.max_filesize_mb * 1e6:
            raise PermanentFailure("too_large", f"{size / 1e6:.1f} MB > max_filesize_mb {o.max_filesize_mb}")

    def download(self, url: str, outdir: str, info: dict | None = None) -> Downloaded:
        """Fetch `url` into `outdir` (metadata first unless `info` is given). Raises DownloadFailure."""
        probe_attempts = 1
        if info is None:
            info, probe_attempts = self.probe(url)

        def fetch(ydl):
            result = ydl.process_ie_result(dict(info), download=True)
            path = _downloaded_path(result)
            self._check_file(result, path)
            return result, path

        (result, path), attempts = self._with_retries(url, fetch, {"outtmpl": os.path.join(
            outdir, "%(id).80B.%(ext)s")})
        size = os.path.getsize(path)
        if self.options.max_filesize_mb is not None and size > self.options.max_filesize_mb * 1e6:
            os.remove(path)
            raise PermanentFailure("too_large", f"{size / 1e6:.1f} MB > max_filesize_mb {self.options.max_filesize_mb}")
        return Downloaded(
            path=path, url=url, webpage=result.get("webpage_url") or url,
            extractor=result.get("extractor_key") or result.get("extractor") or "unknown",
            extractor_id=str(result.get("id")), title=result.get("title"),
            uploader=result.get("uploader") or result.get("channel"),
            duration_s=_float(result.get("duration")), licence=result.get("license"),
            format=result.get("format"), width=_int(result.get("width")), height=_int(result.get("height")),
            num_bytes=size, attempts=attempts + probe_attempts - 1,
        )

    def _check_file(self, result: dict, path: str | None) -> None:
        if not path or not os.path.exists(path):
            raise TransientFailure("missing_output", "yt-dlp reported no downloaded file")
        expected = result.get("filesize")
        size = os.path.getsize(path)
        if size == 0 or (expected and size < expected):
            raise TransientFailure("truncated", f"{size} bytes of {expected or 'unknown'}")

    def _with_retries(self, url: str, action, extra_params: dict | None = None):
        """Run `action(ydl)` under the host limiter; retry transient failures with backoff (Retry-After wins).
        Returns (result, attempts). A wait longer than `max_wait_s` gives up at once (the engine retries later)."""
        from humove.collect.guarded_ytdlp import GuardedYoutubeDL

        o = self.options
        for attempt in range(1, o.retries + 2):
            ydl = GuardedYoutubeDL({**self.ydl_params(), **(extra_params or {})}, self.policy)
            try:
                with self.limiter.slot(url), ydl:
                    return action(ydl), attempt
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                failure = refused(ydl.refusal) if ydl.refusal else classify(exc)
            if isinstance(failure, PermanentFailure) or attempt > o.retries:
                failure.detail = f"{failure.detail} (after {attempt} tries)"
                raise failure
            wait = failure.retry_after_s if failure.retry_after_s is not None else o.backoff_s * 2 ** (attempt - 1)
            if wait > o.max_wait_s:
                raise TransientFailure(failure.reason, f"{failure.detail} (wait {wait:.0f} s > max_wait_s)")
            if failure.reason == "rate_limited":
                self.limiter.pause(url, wait)
            else:
                self._sleep(wait)
        raise AssertionError("unreachable")


def check_url(policy: NetworkPolicy, url: str) -> None:
    """The network policy on a URL before yt-dlp sees it, as a PermanentFailure."""
    try:
        policy.check_url(url)
    except Refused as exc:
        raise refused(exc) from None


def refused(refusal: Refused) -> PermanentFailure:
    return PermanentFailure(refusal.reason, f"refused: {refusal.detail}")


def read_cookies(path: str) -> str:
    """The text of a Netscape cookies file, read once and checked here; yt-dlp gets copies of it, never the file.
    yt-dlp would print a malformed line (cookie value included) or put it in an error message: a bad file is
    refused here instead, naming line numbers only."""
    from yt_dlp.cookies import YoutubeDLCookieJar

    where = f"download.cookies_file {path}"
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: {exc.strerror if isinstance(exc, OSError) else 'not UTF-8 text'}") from None
    bad = [number for number, line in enumerate(text.splitlines(), start=1) if not _cookie_line(line)]
    if bad:
        raise ValueError(f"{where}: lines {bad[:10]} are not cookies (a Netscape cookies.txt line has 7 "
                         "tab-separated fields)")
    try:
        YoutubeDLCookieJar(io.StringIO(text)).load()
    except Exception:  # noqa: BLE001 - its message quotes the offending line
        raise ValueError(f"{where}: not a Netscape cookies file (its first line is '# Netscape HTTP Cookie "
                         "File')") from None
    return text


def _cookie_line(line: str) -> bool:
    """A comment, a blank line or a well-formed cookie entry (the checks yt-dlp makes before printing a line)."""
    entry = line.removeprefix("#HttpOnly_")
    if entry.startswith("#") or not entry.strip():
        return True
    fields = entry.split("\t")
    return len(fields) == 7 and re.fullmatch(r"([0-9]+(\.[0-9]+)?)?", fields[4]) is not None


def _downloaded_path(result: dict) -> str | None:
    for entry in result.get("requested_downloads") or []:
        if entry.get("filepath"):
            return entry["filepath"]
    return result.get("filepath") or result.get("_filename")


def _float(value) -> float | None:
    return None if value is None else float(value)


def _int(value) -> int | None:
    return None if value is None else int(value)


class _QuietLogger:
    """yt-dlp prints errors to stderr even when quiet: failures are reported as records instead."""

    def debug(self, msg):
        pass

    def info(self, msg):
        pass

    def warning(self, msg):
        pass

    def error(self, msg):
        pass
