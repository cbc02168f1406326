"""A yt-dlp `YoutubeDL` whose every request passes a `NetworkPolicy` (humove.collect.netguard).

yt-dlp sends every request (the page, each redirect, the manifests, the fragments, embedded media) through its
request director; this one holds two handlers only:

- `CheckedRequestsRH` (http, https): yt-dlp's `requests` handler whose adapter checks each request before it is
  sent, redirects included (requests follows them through the same adapter), and whose direct connections check
  the address they connected to before a byte is sent.
- `LocalUrlsRH`: `data:` URLs, and `file:` URLs when the policy allows them; nothing that opens a socket.

No other handler (ftp, websockets, impersonation) is present, so a request one of them would have served fails.
yt-dlp's own external programs would connect unchecked: the caller keeps them off (native downloaders, no ffmpeg).
"""

from __future__ import annotations

import functools
import urllib.parse

import urllib3
import yt_dlp
from yt_dlp.networking._requests import RequestsHTTPAdapter, RequestsRH
from yt_dlp.networking._urllib import UrllibRH
from yt_dlp.networking.exceptions import RequestError

from humove.collect.netguard import WEB_SCHEMES, NetworkPolicy, Refused, check_peer


class GuardedYoutubeDL(yt_dlp.YoutubeDL):
    """`yt_dlp.YoutubeDL(params)` under `policy`; `refusal` is the first request the policy refused, if any (yt-dlp
    may report it as another error, e.g. after its generic extractor gave up)."""

    def __init__(self, params: dict, policy: NetworkPolicy):
        self.policy = policy
        self.refusal: Refused | None = None
        super().__init__(params)

    @functools.cached_property
    def _request_director(self):
        return self.build_request_director([functools.partial(CheckedRequestsRH, owner=self), LocalUrlsRH])


class CheckedRequestsRH(RequestsRH):
    def __init__(self, *, owner: GuardedYoutubeDL, **kwargs):
        self.owner = owner
        super().__init__(**kwargs)

    def _create_instance(self, cookiejar, legacy_ssl_support=None):
        session = super()._create_instance(cookiejar, legacy_ssl_support)
        adapter = _CheckedAdapter(self.owner.policy, ssl_context=self._make_sslcontext(legacy_ssl_support),
                                  source_address=self.source_address, max_retries=urllib3.util.retry.Retry(False))
        for prefix in ("http://", "https://", ""):  # "": a redirect to any other scheme is refused, not failed
            session.mount(prefix, adapter)
        return session

    def _send(self, request):
        try:
            return super()._send(request)
        except Refused as refused:
            self.owner.refusal = self.owner.refusal or refused
            raise RequestError(f"{refused.reason}: {refused.detail}") from refused


class _CheckedAdapter(RequestsHTTPAdapter):
    """Every request it sends is checked first; direct connections are checked again at the socket. A host that
    passed is not resolved again for the next request (an HLS stream's hundreds of fragments): the socket check
    still catches it if it turns private."""

    def __init__(self, policy: NetworkPolicy, **kwargs):
        self.policy = policy
        self._passed: set[tuple[str, str]] = set()
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        if not self.policy.allow_private_networks:  # the proxies' pools connect to the proxy: not these
            self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}

    def send(self, request, *args, **kwargs):
        parts = urllib.parse.urlsplit(request.url)
        scheme = parts.scheme.lower()
        if scheme not in WEB_SCHEMES:
            raise Refused("scheme_not_allowed", f"a redirect to a {scheme or 'scheme-less'} URL")
        if (scheme, parts.netloc) not in self._passed:
            self.policy.check_url(request.url)
            self._passed.add((scheme, parts.netloc))
        return super().send(request, *args, **kwargs)


class _PeerChecked:
    """An urllib3 connection that refuses a socket connected to a non-public address, before sending a byte."""

    def _new_conn(self):
        sock = super()._new_conn()
        try:
            check_peer(sock, self.host)
        except Refused:
            sock.close()
            raise
        return sock


class _CheckedHTTPConnection(_PeerChecked, urllib3.connection.HTTPConnection):
    pass


class _CheckedHTTPSConnection(_PeerChecked, urllib3.connection.HTTPSConnection):
    pass


class _CheckedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class LocalUrlsRH(UrllibRH):
    """yt-dlp's urllib handler for `data:` URLs, and `file:` URLs when enabled; never a network scheme."""

    _SUPPORTED_URL_SCHEMES = ("data",)
    _SUPPORTED_PROXY_SCHEMES = None  # no network: a proxy is irrelevant
