"""Structured logging with request ids and a redaction layer.

Redaction works twice over: by field name (``secret``, ``refresh_token``, ...) and by value, masking
anything that looks like a broker token (``pda-``, ``pdr-``, ``user-<env>-``, ``bka-``) wherever it
appears in a log line's values.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from typing import TYPE_CHECKING, Any

import structlog

from broker.observability import metrics

if TYPE_CHECKING:
    from collections.abc import MutableMapping

    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from broker.settings import Settings

REDACTED = "[redacted]"
SECRET_FIELDS = frozenset(
    {
        "secret",
        "client_secret",
        "plaid-secret",
        "refresh_token",
        "access_token",
        "subject_token",
        "token",
        "user_token",
        "authorization",
        "password",
        "key",
        "hash_key",
        "keys",
    }
)
TOKEN_PATTERN = re.compile(r"(pda-|pdr-|bka-|user-[a-z]{1,16}-)[A-Za-z0-9_\-=]{8,}")


def _scrub(value: Any) -> Any:  # noqa: ANN401
    if isinstance(value, str):
        return TOKEN_PATTERN.sub(lambda m: m.group(1) + REDACTED, value)
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in SECRET_FIELDS else _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:  # noqa: ANN401
    """Structlog processor: drop secret fields by name and mask token-shaped values anywhere."""
    for key in list(event_dict):
        if key.lower() in SECRET_FIELDS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure(settings: Settings) -> None:
    """Configure structlog (and the stdlib root logger) once per process."""
    level = getattr(logging, settings.log_level)
    renderer: Any = structlog.processors.JSONRenderer() if settings.json_logs else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=max(level, logging.WARNING), stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
    )
    # Readiness checks read the migration state on every probe; alembic would log each one at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # httpx logs every request at INFO: on the gateway's hot path that is a line (and its cost) per call.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def new_request_id() -> str:
    """A request id: 16 hex characters (64 random bits)."""
    return secrets.token_hex(8)


_STATUS_LABELS = {code: str(code) for code in range(100, 600)}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestContextMiddleware:
    """Request id, ``X-Request-Id``, one access-log line and the request metrics, per request.

    Requests are counted under their route template, never the raw path (which may carry ids).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = structlog.get_logger("broker.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                method = scope.get("method", "")
                route = scope.get("path_template") or "unmatched"
                labels = (method if method in _METHODS else "other", route, _STATUS_LABELS.get(status, "other"))
                metrics.HTTP_REQUESTS.inc(*labels)
                metrics.HTTP_DURATION.observe(elapsed, *labels)
                self.log.info(
                    "request",
                    method=method,
                    path=scope.get("path"),
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                    client_id=state.get("client_id"),
                )
