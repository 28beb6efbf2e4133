"""The admin API's shared HTTP pieces: the API-key guard, body parsing and parameter checks.

Every ``/admin/v1`` router carries :func:`require_admin_key`. Bodies are parsed here, never by Litestar,
so that every malformed input becomes a ``422 validation_failed`` naming the field (never a 500): the
JSON must be one object with unique keys and bounded nesting (:func:`broker.http.params.decode_json_object`),
no string may hold a NUL byte or a lone surrogate (PostgreSQL cannot store either), and the object is
converted into a ``msgspec.Struct`` that forbids unknown fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from broker import errors
from broker.admin_keys import service as admin_keys
from broker.http import ratelimit
from broker.http.auth import bearer_token
from broker.http.params import JSON, MAX_VALUE_CHARS, decode_json_object
from broker.observability import metrics

if TYPE_CHECKING:
    from litestar import Request
    from litestar.connection import ASGIConnection
    from litestar.handlers.base import BaseRouteHandler

    from broker.context import Runtime

PREFIX = "/admin/v1"
READ_METHODS = frozenset({"GET", "HEAD"})
MAX_PATH_PARAM_CHARS = 512
_ACTOR = "admin_actor"

T = TypeVar("T")


async def require_admin_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Litestar guard: a live admin key is required; a ``read`` key only for GET and HEAD.

    On success the key's audit actor (``admin:<name>``) is kept in the request state for
    :func:`actor_of`.

    Raises:
        Unauthorized: missing, malformed, unknown or revoked key.
        Forbidden: a read-only key on a method that changes state.
    """
    runtime: Runtime = connection.app.state.runtime
    write = connection.scope.get("method", "GET") not in READ_METHODS
    presented = bearer_token(connection.headers)
    throttle, address = ratelimit.of(connection.app.state, runtime.settings), ratelimit.address_of(connection.scope)
    if presented is not None:  # a guessed key is throttled like a guessed client secret
        await throttle.check(ratelimit.ADMIN, address)
    try:
        async with runtime.sessions() as session:
            principal = await admin_keys.authenticate(session, runtime.ring, presented, write=write)
    except errors.Unauthorized:
        metrics.AUTH_FAILURES.inc("admin")
        if presented is not None:
            await throttle.failed(ratelimit.ADMIN, address)
        raise
    connection.scope.setdefault("state", {})[_ACTOR] = principal.actor


def actor_of(request: Request[Any, Any, Any]) -> str:
    """The audit actor of an admin request (set by :func:`require_admin_key`)."""
    actor = request.scope.get("state", {}).get(_ACTOR)
    if not actor:  # pragma: no cover - every admin router carries the guard
        raise errors.Unauthorized("admin API key required")
    return str(actor)


def _check_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise errors.ValidationFailed(f"{where} contains a NUL byte")
    if len(value) > MAX_VALUE_CHARS:
        raise errors.ValidationFailed(f"{where} is too long")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.ValidationFailed(f"{where} is not valid UTF-8 text") from None


def _check_strings(value: object, path: str) -> None:
    if isinstance(value, str):
        _check_text(value, f"field `{path}`")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"a field name in `{path}`")
            _check_strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{path}[{index}]")


def convert(data: dict[str, Any], model: type[T]) -> T:
    """Convert a decoded JSON object into ``model``; every failure is a 422 naming the field."""
    _check_strings(data, "$")
    try:
        return msgspec.convert(data, type=model)
    except msgspec.ValidationError as exc:
        raise errors.ValidationFailed(f"invalid body: {exc}") from None


async def read_body(request: Request[Any, Any, Any], model: type[T]) -> T:
    """Parse the request body as a JSON object and convert it into ``model``.

    Raises:
        ValidationFailed: wrong content type (415), empty or malformed JSON, NUL bytes, unknown fields,
            wrong types or missing fields (422).
    """
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in {JSON, ""}:
        raise errors.ValidationFailed("body must be JSON (Content-Type: application/json)", status=415)
    raw = await request.body()
    if not raw.strip():
        raise errors.ValidationFailed("body must be a JSON object")
    return convert(decode_json_object(raw, errors.ValidationFailed), model)


def query_param(request: Request[Any, Any, Any], name: str) -> str | None:
    """The single value of query parameter ``name`` (None when absent or empty).

    Raises:
        ValidationFailed: the parameter is repeated, too long, or holds a NUL byte.
    """
    values = request.query_params.getall(name, [])
    if len(values) > 1:
        raise errors.ValidationFailed(f"query parameter {name!r} is repeated")
    if not values or values[0] == "":
        return None
    value = str(values[0])
    _check_text(value, f"query parameter {name!r}")
    return value


def path_param(value: str, what: str) -> str:
    """A path parameter that can be looked up; anything unstorable cannot name an object, so 404.

    Raises:
        NotFound: the value holds a NUL byte, is not valid text, or is absurdly long.
    """
    try:
        _check_text(value, what)
    except errors.ValidationFailed:
        raise errors.NotFound(f"no {what} with that id") from None
    if len(value) > MAX_PATH_PARAM_CHARS:
        raise errors.NotFound(f"no {what} with that id")
    return value


MAX_LIMIT_DIGITS = 6


def page_limit(request: Request[Any, Any, Any], default: int, maximum: int) -> int:
    """The ``limit`` query parameter: ``default`` when absent, else digits only (the service checks the range)."""
    raw = query_param(request, "limit")
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_LIMIT_DIGITS:
        raise errors.ValidationFailed(f"limit must be an integer between 1 and {maximum}")
    return int(raw)
