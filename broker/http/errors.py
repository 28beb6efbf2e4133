"""The only place that renders wire errors.

Three families share one handler, chosen by path:
    * ``/oauth/...``: RFC 6749 §5.2 ``{error, error_description, request_id}``.
    * ``/user/...``: Plaid's general error object.
    * everything else (admin, health, unknown paths): ``{error: {code, message}, request_id}``.

Server-only detail (``BrokerError.debug``, stack traces) is logged, never sent. A 5xx body says nothing
internal. Database unavailability is a 503 with ``Retry-After``, never a hang or a stack trace.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from broker import errors
from broker.http.logging import REDACTED, TOKEN_PATTERN, new_request_id

if TYPE_CHECKING:
    from collections.abc import Mapping

log = structlog.get_logger("broker.http")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


_PLAID_FOR_OAUTH: Mapping[type[errors.OAuthError], type[errors.PlaidError]] = {
    errors.InvalidClient: errors.InvalidApiKeys,
    errors.RateLimited: errors.RateLimitExceeded,
}


def request_id_of(request: Request[Any, Any, Any]) -> str:
    """The request id the middleware assigned (every response carries one).

    Routing failures (404, 405) are raised before any middleware runs; they get their id here.
    """
    state = request.scope.setdefault("state", {})
    value = state.get("request_id")
    if not value:
        value = state["request_id"] = new_request_id()
    return str(value)


def _family(path: str) -> str:
    if path.startswith("/oauth/"):
        return "oauth"
    if path.startswith("/user/"):
        return "plaid"
    return "admin"


# SQLSTATEs that mean "try again": query_canceled (statement_timeout), lock_not_available
# (lock_timeout), serialization_failure, deadlock_detected, too_many_connections, and the connection/operator
# classes.
_TRANSIENT_SQLSTATES = frozenset({"57014", "55P03", "40001", "40P01", "57P01", "57P02", "57P03", "53300"})


def _is_db_unavailable(exc: Exception) -> bool:
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeoutError, ConnectionError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        sqlstate = str(getattr(exc.orig, "sqlstate", "") or "")
        return exc.connection_invalidated or sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith("08")
    # The hot paths use asyncpg directly (broker.db.hotpath): its own errors, unwrapped.
    if isinstance(exc, asyncpg.InterfaceError):  # connection closed, pool closing
        return True
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(exc.sqlstate or "")
        return sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith("08")
    return isinstance(exc, OSError)


def _from_http_exception(exc: HTTPException) -> errors.BrokerError:
    status = exc.status_code
    if status == 413:  # noqa: PLR2004
        return errors.InvalidRequest("request body too large", status=status)
    if status == 404:  # noqa: PLR2004
        return errors.NotFound("no such route", status=status)
    if status == 405:  # noqa: PLR2004
        return errors.InvalidRequest("method not allowed", status=status)
    if status >= 500:  # noqa: PLR2004
        return errors.BrokerError("internal error", status=500)
    return errors.InvalidRequest("malformed request", status=status)


def oauth_body(err: errors.BrokerError, request_id: str) -> dict[str, Any]:
    """RFC 6749 §5.2 error body."""
    code = err.error if isinstance(err, errors.OAuthError) else "invalid_request"
    return {"error": code, "error_description": err.description or code.replace("_", " "), "request_id": request_id}


def plaid_body(err: errors.BrokerError, request_id: str) -> dict[str, Any]:
    """Plaid's general error object."""
    if isinstance(err, errors.OAuthError):
        plaid_cls = _PLAID_FOR_OAUTH.get(type(err), errors.InvalidBody)
        err_type, err_code = plaid_cls.error_type, plaid_cls.error_code
        display = None
    elif isinstance(err, errors.PlaidError):
        err_type, err_code, display = err.error_type, err.error_code, err.display_message
    else:
        err_type, err_code, display = "INVALID_REQUEST", "INVALID_BODY", None
    return {
        "error_type": err_type,
        "error_code": err_code,
        "error_code_reason": None,
        "error_message": err.description or err_code.lower().replace("_", " "),
        "display_message": display,
        "request_id": request_id,
        "causes": [],
        "status": None,
        "documentation_url": None,
        "suggested_action": None,
    }


def admin_body(err: errors.BrokerError, request_id: str) -> dict[str, Any]:
    """The admin API's error body."""
    if isinstance(err, errors.AdminError):
        code = err.code
    elif isinstance(err, errors.OAuthError):
        code = err.error
    else:
        code = "invalid_request"
    return {"error": {"code": code, "message": err.description or code.replace("_", " ")}, "request_id": request_id}


_UPSTREAM_OAUTH_FIELDS = ("error", "error_description", "error_uri")
_UPSTREAM_PLAID_FIELDS = (
    "error_type",
    "error_code",
    "error_code_reason",
    "error_message",
    "display_message",
    "causes",
    "status",
    "documentation_url",
    "suggested_action",
)


def _masked(value: Any) -> Any:  # noqa: ANN401
    return TOKEN_PATTERN.sub(lambda m: m.group(1) + REDACTED, value) if isinstance(value, str) else value


def upstream_body(err: errors.UpstreamError, family: str, request_id: str) -> dict[str, Any]:
    """The body of a relayed upstream answer: its error fields (an allow-list, tokens masked), our request id.

    Without an upstream body (5xx, malformed, unreachable) the family's generic unavailable error.
    """
    if err.body is not None:
        fields = _UPSTREAM_OAUTH_FIELDS if family != "plaid" else _UPSTREAM_PLAID_FIELDS
        body = {name: _masked(err.body[name]) for name in fields if name in err.body}
        if family == "plaid":
            body.setdefault("display_message", None)
        body["request_id"] = request_id
        return body
    if family == "plaid":
        body = plaid_body(errors.InvalidBody(err.description), request_id)
        body.update(error_type="API_ERROR", error_code="INTERNAL_SERVER_ERROR")
        return body
    code = "temporarily_unavailable" if err.http_status == 503 else "server_error"  # noqa: PLR2004
    return {"error": code, "error_description": err.description, "request_id": request_id}


def render(request: Request[Any, Any, Any], err: errors.BrokerError) -> Response[Any]:
    """Render a broker error in the family of the request's path; token-shaped text is masked."""
    err.description = TOKEN_PATTERN.sub(lambda m: m.group(1) + REDACTED, err.description)
    request_id = request_id_of(request)
    family = _family(request.url.path)
    status = err.http_status
    headers: dict[str, str] = {"X-Request-Id": request_id}
    if isinstance(err, errors.UpstreamError):
        if family != "plaid" or err.body is None:
            headers.update(NO_STORE)
        if err.retry_after is not None:
            headers["Retry-After"] = str(err.retry_after)
        log.info("upstream error relayed", status=status, debug=err.debug)
        body = upstream_body(err, family, request_id)
        return Response(content=body, status_code=status, headers=headers, media_type=MediaType.JSON)
    if family == "oauth":
        body = oauth_body(err, request_id)
        headers.update(NO_STORE)
        if isinstance(err, errors.InvalidClient) and "authorization" in request.headers:
            headers["WWW-Authenticate"] = 'Basic realm="broker"'
    elif family == "plaid":
        body = plaid_body(err, request_id)
        if isinstance(err, errors.InvalidClient):
            status = 400
    else:
        body = admin_body(err, request_id)
    if isinstance(err, errors.RateLimited):
        headers["Retry-After"] = str(err.retry_after)
    if err.debug:
        log.info("request refused", error=type(err).__name__, debug=err.debug, status=status)
    return Response(content=body, status_code=status, headers=headers, media_type=MediaType.JSON)


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    request_id = request_id_of(request)
    log.warning("database unavailable", error=type(exc).__name__)
    description = "service temporarily unavailable, retry shortly"
    family = _family(request.url.path)
    if family == "oauth":
        body: dict[str, Any] = {"error": "temporarily_unavailable", "error_description": description}
    elif family == "plaid":
        body = plaid_body(errors.InvalidBody(description), request_id)
        body.update(error_type="API_ERROR", error_code="INTERNAL_SERVER_ERROR")
    else:
        body = {"error": {"code": "unavailable", "message": description}}
    body["request_id"] = request_id
    headers = {"Retry-After": "2", "X-Request-Id": request_id, **NO_STORE}
    return Response(content=body, status_code=503, headers=headers, media_type=MediaType.JSON)


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Litestar exception handler for every exception type."""
    if isinstance(exc, errors.BrokerError):
        return render(request, exc)
    if isinstance(exc, HTTPException):
        return render(request, _from_http_exception(exc))
    if _is_db_unavailable(exc):
        return _unavailable(request, exc)
    request_id = request_id_of(request)
    log.error("unhandled error", error=type(exc).__name__, exc_info=exc)
    internal = errors.BrokerError("internal error", status=500)
    family = _family(request.url.path)
    if family == "oauth":
        body: dict[str, Any] = {
            "error": "server_error",
            "error_description": "internal error",
            "request_id": request_id,
        }
    elif family == "plaid":
        body = plaid_body(internal, request_id)
        body.update(error_type="API_ERROR", error_code="INTERNAL_SERVER_ERROR")
    else:
        body = admin_body(internal, request_id)
    return Response(content=body, status_code=500, headers={"X-Request-Id": request_id}, media_type=MediaType.JSON)


HANDLERS: dict[int | type[Exception], Any] = {Exception: handle_exception}
