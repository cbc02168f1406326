"""Where downloads may go: only public addresses, only allowed URL schemes. A URL list is untrusted input.

`NetworkPolicy.check_url` runs before each request (the listed URL, every redirect, every page, manifest and
fragment yt-dlp fetches: see `humove.collect.guarded_ytdlp`), after DNS resolution: loopback, private,
link-local, shared (100.64/10), multicast, reserved and unspecified addresses are refused, IPv4 and IPv6, the
IPv4 inside IPv4-mapped, 6to4 and NAT64 addresses included. `check_peer` checks the address a socket actually
connected to, before a byte is sent, so a name that resolves to another address at connect time (DNS rebinding)
is caught too. With a proxy the proxy connects on our behalf: the policy checks the target's name as this
machine resolves it, and the proxy (the user's own choice) is trusted to resolve it the same way.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass

from humove.redact import redact_text

WEB_SCHEMES = ("http", "https")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(Exception):
    """A request the policy does not allow: `reason` is `blocked_address` or `scheme_not_allowed`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def is_public(address: str) -> bool:
    """Whether an IP address (text, IPv4 or IPv6, a zone id allowed) is a public unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6:  # an IPv4 address carried in IPv6 reaches that IPv4 address
        if ip.ipv4_mapped:
            return is_public(str(ip.ipv4_mapped))
        if ip in _NAT64:
            return is_public(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
        if ip.sixtofour and not is_public(str(ip.sixtofour)):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


@dataclass(frozen=True)
class NetworkPolicy:
    allowed_schemes: frozenset[str] = frozenset(WEB_SCHEMES)
    allow_private_networks: bool = False

    def check_url(self, url: str) -> None:
        """Raise `Refused` for a scheme not allowed, or a host that resolves to a non-public address. A name that
        does not resolve here passes: the connection fails on its own (or a proxy resolves it)."""
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in self.allowed_schemes:
            allowed = ", ".join(sorted(self.allowed_schemes))
            raise Refused("scheme_not_allowed", f"{'scheme ' + repr(scheme) if scheme else 'no scheme'} "
                                                f"(allowed: {allowed}; see download.allowed_schemes)")
        if self.allow_private_networks or scheme not in WEB_SCHEMES:  # file: and data: open no socket
            return
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise Refused("blocked_address", f"malformed address in {redact_text(url)!r}: {exc}") from exc
        if not host:
            raise Refused("blocked_address", "the URL names no host")
        try:
            addresses = resolve(host, port or 443)
        except (socket.gaierror, UnicodeError):
            return
        for address in sorted(addresses):
            check_address(address, host)


def resolve(host: str, port: int) -> set[str]:
    """The addresses `host` resolves to here (as a connection would look them up)."""
    return {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}


def check_address(address: str, host: str) -> None:
    """Raise `Refused` unless `address` (what `host` resolved to) is public."""
    if not is_public(address):
        named = "" if host == address else f"{host} resolves to "
        raise Refused("blocked_address", f"{named}{address}, not a public address "
                                         "(set download.allow_private_networks to allow it)")


def check_peer(sock: socket.socket, host: str) -> None:
    """Raise `Refused` if a connected socket's peer is not public."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        check_address(sock.getpeername()[0], host)
