"""Client credentials from headers, body or HTTP Basic, and the admin API guard.

Sources (BRIEF §3): ``PLAID-CLIENT-ID``/``PLAID-SECRET`` headers, body ``client_id`` with ``secret`` or
``client_secret``, and HTTP Basic (RFC 6749 §2.3.1). Basic together with another source is refused
(RFC 6749 §2.3: one method per request). Headers and body that disagree are refused; identical values
in both (as plaid-python sends when a caller sets both) are accepted.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from broker import errors
from broker.http import ratelimit
from broker.observability import metrics
from broker.tenants import clients

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from litestar import Request

    from broker.context import Runtime
    from broker.tenants.clients import AuthenticatedClient


T = TypeVar("T")
_FRESH_ATTEMPTS = 3


@dataclass(frozen=True, repr=False)
class Credentials:
    """A client id and secret as presented. ``repr`` hides the secret."""

    client_id: str
    secret: str

    def __repr__(self) -> str:
        return f"Credentials(client_id={self.client_id!r}, secret=***)"


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise errors.InvalidClient("malformed HTTP Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise errors.InvalidClient("malformed HTTP Basic credentials")
    # RFC 6749 §2.3.1: client id and secret are form-urlencoded before Basic encoding.
    return unquote(client_id), unquote(secret)


def _text(value: Any, name: str) -> str | None:  # noqa: ANN401
    if value is None or value == "":
        return None
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else value
    if not isinstance(value, str):
        raise errors.InvalidRequest(f"{name} must be a string")
    if "\x00" in value or len(value) > 256:  # noqa: PLR2004
        raise errors.InvalidClient("client authentication failed")
    return value


def extract_credentials(headers: Any, body: dict[str, Any]) -> Credentials:  # noqa: ANN401
    """Find the one set of client credentials in a request.

    Args:
        headers: The request headers (case-insensitive mapping).
        body: Parsed body parameters; values may be strings or single-item lists.

    Raises:
        InvalidRequest: two sources disagree, or Basic is combined with another source.
        InvalidClient: no complete credentials were presented.
    """
    header_id = _text(headers.get("plaid-client-id"), "PLAID-CLIENT-ID")
    header_secret = _text(headers.get("plaid-secret"), "PLAID-SECRET")
    body_id = _text(body.get("client_id"), "client_id")
    secret = _text(body.get("secret"), "secret")
    client_secret = _text(body.get("client_secret"), "client_secret")
    if secret is not None and client_secret is not None and secret != client_secret:
        raise errors.InvalidRequest("secret and client_secret disagree")
    body_secret = secret or client_secret

    authorization = headers.get("authorization")
    basic = _basic(authorization) if authorization else None
    if basic is not None:
        if any(v is not None for v in (header_id, header_secret, body_id, body_secret)):
            raise errors.InvalidRequest("use exactly one client authentication method")
        return Credentials(*basic)

    for header_value, body_value, label in ((header_id, body_id, "client id"), (header_secret, body_secret, "secret")):
        if header_value is not None and body_value is not None and header_value != body_value:
            raise errors.InvalidRequest(f"the {label} in the headers and in the body disagree")
    client_id = header_id or body_id
    client_secret_value = header_secret or body_secret
    if client_id is None or client_secret_value is None:
        raise errors.InvalidClient("client authentication required", debug="missing client id or secret")
    return Credentials(client_id, client_secret_value)


def bearer_token(headers: Any) -> str | None:  # noqa: ANN401
    """The token of an ``Authorization: Bearer`` header, if any."""
    authorization = headers.get("authorization")
    if not authorization:
        return None
    scheme, _, value = str(authorization).partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def authenticate_client(
    request: Request[Any, Any, Any], runtime: Runtime, body: dict[str, Any], *, cached: bool = False
) -> AuthenticatedClient:
    """Authenticate the calling client from ``request`` and its parsed ``body``; note it for the access log.

    Failed attempts are throttled per client id and source address (:mod:`broker.http.ratelimit`).
    ``cached`` lets a cached snapshot answer; only for callers that re-check it in their own statement
    (:mod:`broker.tenants.clients`).
    """
    credentials = extract_credentials(request.headers, body)
    throttle, address = ratelimit.of(request.app.state, runtime.settings), ratelimit.address_of(request.scope)
    await throttle.check(credentials.client_id, address)
    try:
        client = await clients.authenticate(runtime, credentials, cached=cached)
    except errors.InvalidClient:
        metrics.AUTH_FAILURES.inc("client")
        await throttle.failed(credentials.client_id, address)
        raise
    request.scope.setdefault("state", {})["client_id"] = client.client_id
    return client


async def as_client(
    request: Request[Any, Any, Any],
    runtime: Runtime,
    body: dict[str, Any],
    work: Callable[[AuthenticatedClient], Awaitable[T]],
) -> T:
    """Authenticate (from the client cache when possible) and run ``work`` for the client.

    ``work`` must re-check the snapshot in its statement and raise ``StaleClient`` when it no longer
    holds, having written nothing (:mod:`broker.tenants.clients`); it then runs again with a snapshot
    read from the database. A refusal (any ``BrokerError``) based on a cached snapshot is also re-checked
    once against a fresh read, so a stale cache can never refuse what the database now allows.
    """
    client = await authenticate_client(request, runtime, body, cached=True)
    for _ in range(_FRESH_ATTEMPTS):
        try:
            return await work(client)
        except clients.StaleClient:
            pass
        except errors.BrokerError:
            if not client.from_cache:
                raise
        runtime.clients.evict(client.client_id)
        client = await authenticate_client(request, runtime, body)
    # The tenant changed under every attempt: answer as for any other failed authentication.
    raise errors.InvalidClient("client authentication failed", debug="client changed during the request")
