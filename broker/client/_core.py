"""What the sync and async clients share: each call described once, and broker's error bodies decoded."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote

from broker.client.errors import BrokerAPIError

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP call and how to read its answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)


def segment(value: str) -> str:
    """A path segment, percent-encoded (URNs keep their colons)."""
    return quote(value, safe=":@")


def scope_text(scope: str | Iterable[str] | None) -> str | None:
    """A scope as broker expects it: space-separated."""
    if scope is None or isinstance(scope, str):
        return scope
    return " ".join(scope)


def error_of(response: httpx.Response) -> BrokerAPIError:
    """Decode any of broker's three error shapes (OAuth, admin, Plaid)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    request_id = body.get("request_id") or response.headers.get("x-request-id")
    if isinstance(body.get("error"), dict):
        code, message = str(body["error"].get("code", "")), str(body["error"].get("message", ""))
    elif "error" in body:
        code, message = str(body["error"]), str(body.get("error_description", ""))
    elif "error_code" in body:
        code, message = str(body["error_code"]), str(body.get("error_message", ""))
    else:
        code, message = "http_error", response.reason_phrase or "unexpected response"
    return BrokerAPIError(response.status_code, code, message, request_id)


def finish(call: Call[T], response: httpx.Response) -> T:
    """The parsed answer, or :class:`BrokerAPIError`."""
    if response.status_code >= 400:  # noqa: PLR2004
        raise error_of(response)
    return call.parse(response.json() if response.content else None)


def ignore(_: Any) -> None:  # noqa: ANN401 - any JSON
    """A parser for answers without content worth returning."""
