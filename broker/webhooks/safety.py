"""Outbound safety for webhook URLs (SSRF): which URLs may be registered, and which addresses reached.

Invariants:
    * Only ``http`` and ``https`` URLs with a host, without user info or fragment, at most 2,048
      characters. Plain ``http`` is refused in production unless ``BROKER_WEBHOOK_ALLOW_HTTP`` is set.
    * Unless private targets are allowed (``BROKER_WEBHOOK_ALLOW_PRIVATE``; allowed by default outside
      production), every address a host resolves to must be public: no loopback, private, link-local
      (cloud metadata), shared, reserved, multicast or unspecified address, IPv4-mapped IPv6 included.
    * The check runs when an endpoint is registered and again at every connection: the guarded network
      backend resolves the host itself, checks every address and connects to a checked address, so a DNS
      answer that changes between registration and delivery (DNS rebinding) cannot redirect a delivery.
    * Redirects are never followed (the worker's client has ``follow_redirects=False``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpcore
import httpx

if TYPE_CHECKING:
    from collections.abc import Iterable

MAX_URL_CHARS = 2048
RESOLVE_TIMEOUT_SECONDS = 5.0


class UnsafeTarget(Exception):
    """A webhook URL or the address it resolves to is not allowed; the message says why."""


def check_url(url: str, *, allow_http: bool) -> tuple[str, int]:
    """Check a URL's shape; return its host and port.

    Raises:
        UnsafeTarget: not http(s), plain http where refused, no host, user info, fragment, too long.
    """
    if len(url) > MAX_URL_CHARS:
        raise UnsafeTarget(f"url is longer than {MAX_URL_CHARS} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):  # noqa: PLR2004
        raise UnsafeTarget("url must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeTarget("url is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"}:
        raise UnsafeTarget("url must be http:// or https://")
    if scheme == "http" and not allow_http:
        raise UnsafeTarget("url must be https:// (plain http is refused in production)")
    if not parts.hostname:
        raise UnsafeTarget("url must name a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget("url must not carry user info (user:password@)")
    if parts.fragment:
        raise UnsafeTarget("url must not have a #fragment")
    return parts.hostname, port or (443 if scheme == "https" else 80)


def address_allowed(address: str) -> bool:
    """Whether an IP address is a public unicast address (IPv4-mapped IPv6 judged as IPv4)."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (an IP literal resolves to itself).

    Raises:
        UnsafeTarget: the host does not resolve (in time).
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=RESOLVE_TIMEOUT_SECONDS
        )
    except (OSError, TimeoutError, UnicodeError):
        raise UnsafeTarget(f"host {host!r} does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UnsafeTarget(f"host {host!r} does not resolve")
    return addresses


async def check_host(host: str, port: int) -> list[str]:
    """Resolve ``host`` and require every address to be public; return the addresses.

    Raises:
        UnsafeTarget: the host does not resolve, or any address is not public.
    """
    addresses = await resolve(host, port)
    refused = [a for a in addresses if not address_allowed(a)]
    if refused:
        raise UnsafeTarget(f"host {host!r} resolves to a non-public address ({refused[0]})")
    return addresses


async def check_target(url: str, *, allow_http: bool, allow_private: bool) -> None:
    """Everything :func:`check_url` checks, and the host's addresses unless private targets are allowed.

    Raises:
        UnsafeTarget: see :func:`check_url` and :func:`check_host`.
    """
    host, port = check_url(url, allow_http=allow_http)
    if not allow_private:
        await check_host(host, port)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, checks every address, and connects only to checked ones."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to the first reachable checked address of ``host``."""
        try:
            addresses = await check_host(host, port)
        except UnsafeTarget as exc:
            raise httpcore.ConnectError(f"refused: {exc}") from None
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last if last is not None else httpcore.ConnectError(f"cannot connect to {host}")

    async def connect_unix_socket(
        self,
        path: str,  # noqa: ARG002
        timeout: float | None = None,  # noqa: ARG002, ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,  # noqa: ARG002
    ) -> httpcore.AsyncNetworkStream:
        """Unix sockets are never a webhook target."""
        raise httpcore.ConnectError("refused: unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        """Delegate to the wrapped backend."""
        await self._inner.sleep(seconds)


def transport(*, guarded: bool, max_connections: int) -> httpx.AsyncHTTPTransport:
    """The worker's transport: proxies from the environment ignored, and the guarded backend when asked.

    httpx has no public hook for the network backend, so the guarded transport swaps the connection pool
    for one built with :class:`GuardedBackend`; ``tests/test_webhooks_ssrf.py`` proves the swap works.
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    result = httpx.AsyncHTTPTransport(trust_env=False, limits=limits)
    if guarded:
        result._pool = httpcore.AsyncConnectionPool(  # noqa: SLF001
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(),
        )
    return result
