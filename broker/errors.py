"""Framework-free error tree.

Services raise these; ``broker.http.errors`` is the only place that turns them into wire responses.
Each error carries a client-safe ``description`` and a server-only ``debug`` string that is logged but
never sent (the split fosite makes between a hint and debug detail).
"""

from __future__ import annotations

from typing import ClassVar


class BrokerError(Exception):
    """Base of every error broker raises on purpose."""

    status: ClassVar[int] = 400

    def __init__(self, description: str = "", *, debug: str = "", status: int | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.debug = debug
        self.http_status = status if status is not None else type(self).status


# --- OAuth 2.0 errors (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 7009 §2.2.1) -----------------------------


class OAuthError(BrokerError):
    """An error answered as ``{error, error_description, request_id}``."""

    error: ClassVar[str] = "invalid_request"


class InvalidRequest(OAuthError):
    """Malformed request: missing, duplicated or unparsable parameter, or a bad subject token."""

    error = "invalid_request"


class InvalidClient(OAuthError):
    """Client authentication failed (RFC 6749 §5.2: 401)."""

    error = "invalid_client"
    status = 401


class InvalidGrant(OAuthError):
    """The refresh token or grant is invalid, expired, revoked, or not the caller's."""

    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    """The authenticated client may not use this grant type."""

    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    """The grant type is not one broker knows."""

    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    """The requested scope is unknown, malformed or exceeds what may be granted."""

    error = "invalid_scope"


class InvalidTarget(OAuthError):
    """An audience or resource is unknown or not allowed (RFC 8693 §2.2.2, RFC 8707)."""

    error = "invalid_target"


class UnsupportedTokenType(OAuthError):
    """Revocation of this token type is not supported (RFC 7009 §2.2.1)."""

    error = "unsupported_token_type"


# --- Gateway mode: what an upstream answered (broker.gateway) -------------------------------------


class UpstreamError(BrokerError):
    """A failure at a tenant's upstream, relayed to the caller.

    With ``body`` (the upstream answered a 4xx with an OAuth or Plaid error object), the caller gets
    that status and body with broker's own ``request_id``. Without it, the upstream failed (5xx, a
    malformed answer: 502) or could not be reached in time (timeout, refused, circuit open: 503), and
    the caller gets a generic error with ``Retry-After``.
    """

    status = 502

    def __init__(
        self,
        description: str = "",
        *,
        status: int | None = None,
        body: dict[str, object] | None = None,
        retry_after: int | None = None,
        upstream_request_id: str | None = None,
        debug: str = "",
    ) -> None:
        super().__init__(description, debug=debug, status=status)
        self.body = body
        self.retry_after = retry_after
        self.upstream_request_id = upstream_request_id


# --- Plaid general errors ----------------------------------------------------------------------------


class PlaidError(BrokerError):
    """An error answered as Plaid's general error object."""

    error_type: ClassVar[str] = "INVALID_REQUEST"
    error_code: ClassVar[str] = "INVALID_FIELD"
    display_message: ClassVar[str | None] = None


class InvalidBody(PlaidError):
    """The body is not a JSON object of the expected shape."""

    error_type = "INVALID_REQUEST"
    error_code = "INVALID_BODY"


class MissingFields(PlaidError):
    """A required field is absent."""

    error_type = "INVALID_REQUEST"
    error_code = "MISSING_FIELDS"


class InvalidField(PlaidError):
    """A field has the wrong type or an out-of-range value."""

    error_type = "INVALID_REQUEST"
    error_code = "INVALID_FIELD"


class InvalidApiKeys(PlaidError):
    """Client id and secret do not match an active client."""

    error_type = "INVALID_INPUT"
    error_code = "INVALID_API_KEYS"


class RateLimitExceeded(PlaidError):
    """Plaid's rate-limit error (HTTP 429); broker answers it to throttled client authentication."""

    error_type = "RATE_LIMIT_EXCEEDED"
    error_code = "RATE_LIMIT"


class UserNotFound(PlaidError):
    """The user does not exist for this client (or was removed)."""

    error_type = "USER_ERROR"
    error_code = "USER_NOT_FOUND"


# --- Admin API errors ------------------------------------------------------------------------------


class AdminError(BrokerError):
    """An error answered on the admin API as ``{error: {code, message}, request_id}``."""

    code: ClassVar[str] = "invalid_request"


class ValidationFailed(AdminError):
    """The admin request body or a parameter failed validation."""

    code = "validation_failed"
    status = 422


class NotFound(AdminError):
    """The addressed object does not exist."""

    code = "not_found"
    status = 404


class Conflict(AdminError):
    """The change conflicts with existing state (duplicate name, object in use)."""

    code = "conflict"
    status = 409


class Unauthorized(AdminError):
    """Missing or invalid admin API key."""

    code = "unauthorized"
    status = 401


class Forbidden(AdminError):
    """The admin API key may not perform this action."""

    code = "forbidden"
    status = 403


class RateLimited(OAuthError, AdminError):
    """Too many failed authentication attempts: 429 with ``Retry-After`` (RFC 6585 §4).

    Rendered in every family: OAuth ``slow_down`` (the registered OAuth error for "slow down your
    requests", RFC 8628 §3.5), Plaid ``RATE_LIMIT_EXCEEDED``/``RATE_LIMIT``, admin ``rate_limited``.
    """

    error = "slow_down"
    code = "rate_limited"
    status = 429

    def __init__(self, description: str = "", *, retry_after: int, debug: str = "") -> None:
        super().__init__(description, debug=debug)
        self.retry_after = retry_after
