"""Typed results of the client's calls (frozen dataclasses; tokens and secrets are masked in ``repr``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _time(value: Any) -> datetime | None:  # noqa: ANN401 - JSON
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _required_time(value: Any) -> datetime:  # noqa: ANN401 - JSON
    parsed = _time(value)
    if parsed is None:
        raise ValueError("expected a timestamp")
    return parsed


@dataclass(frozen=True)
class TokenResponse:
    """A token endpoint answer (RFC 6749 §5.1; ``issued_token_type`` for exchanges, RFC 8693)."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    token_type: str
    expires_in: int
    scope: str
    request_id: str
    issued_token_type: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenResponse:
        """Build from broker's JSON."""
        return cls(
            access_token=data["access_token"],
            refresh_token=data["refresh_token"],
            token_type=data["token_type"],
            expires_in=int(data["expires_in"]),
            scope=data.get("scope", ""),
            request_id=data.get("request_id", ""),
            issued_token_type=data.get("issued_token_type"),
        )


@dataclass(frozen=True)
class Introspection:
    """An introspection answer (RFC 7662). Only ``active`` is set when the token is not active for you."""

    active: bool
    request_id: str = ""
    scope: str | None = None
    client_id: str | None = None
    sub: str | None = None
    aud: str | None = None
    iss: str | None = None
    exp: int | None = None
    iat: int | None = None
    token_type: str | None = None
    user_id: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Introspection:
        """Build from broker's JSON."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class WebhookEndpoint:
    """A webhook endpoint. ``secret`` is set only in the answer to create and rotate-secret."""

    id: str
    url: str
    client_id: str | None
    audience: str | None
    events: tuple[str, ...]
    enabled: bool
    description: str | None
    previous_secret_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WebhookEndpoint:
        """Build from broker's JSON."""
        return cls(
            id=data["id"],
            url=data["url"],
            client_id=data.get("client_id"),
            audience=data.get("audience"),
            events=tuple(data["events"]),
            enabled=bool(data["enabled"]),
            description=data.get("description"),
            previous_secret_expires_at=_time(data.get("previous_secret_expires_at")),
            created_at=_required_time(data["created_at"]),
            updated_at=_required_time(data["updated_at"]),
            secret=data.get("secret"),
        )


@dataclass(frozen=True)
class WebhookAttempt:
    """One HTTP attempt of a delivery."""

    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    response_body: str | None
    error: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WebhookAttempt:
        """Build from broker's JSON."""
        return cls(
            attempted_at=_required_time(data["attempted_at"]),
            duration_ms=int(data["duration_ms"]),
            status_code=data.get("status_code"),
            response_body=data.get("response_body"),
            error=data.get("error"),
        )


@dataclass(frozen=True)
class WebhookDelivery:
    """One event for one endpoint, with its attempts when fetched one by one."""

    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    status: str
    attempt_count: int
    failures: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    payload: dict[str, Any] = field(repr=False)
    attempts: tuple[WebhookAttempt, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WebhookDelivery:
        """Build from broker's JSON."""
        return cls(
            id=data["id"],
            event_id=data["event_id"],
            event_type=data["event_type"],
            endpoint_id=data["endpoint_id"],
            status=data["status"],
            attempt_count=int(data["attempt_count"]),
            failures=int(data["failures"]),
            next_attempt_at=_time(data.get("next_attempt_at")),
            last_attempt_at=_time(data.get("last_attempt_at")),
            last_status_code=data.get("last_status_code"),
            last_error=data.get("last_error"),
            delivered_at=_time(data.get("delivered_at")),
            created_at=_required_time(data["created_at"]),
            payload=dict(data["payload"]),
            attempts=tuple(WebhookAttempt.from_json(a) for a in data.get("attempts") or ()),
        )


@dataclass(frozen=True)
class DeliveryPage:
    """A page of deliveries, newest first; pass ``next_after`` as ``after`` for the next page."""

    data: tuple[WebhookDelivery, ...]
    next_after: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeliveryPage:
        """Build from broker's JSON."""
        return cls(tuple(WebhookDelivery.from_json(d) for d in data["data"]), data.get("next_after"))


@dataclass(frozen=True)
class Tenant:
    """A client (tenant). ``secret`` is set only in the answer to create."""

    client_id: str
    name: str
    kind: str
    status: str
    allowed_scopes: tuple[str, ...]
    default_scopes: tuple[str, ...]
    access_token_ttl: int | None
    refresh_token_ttl: int | None
    secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tenant:
        """Build from broker's JSON."""
        return cls(
            client_id=data["client_id"],
            name=data["name"],
            kind=data["kind"],
            status=data["status"],
            allowed_scopes=tuple(data["allowed_scopes"]),
            default_scopes=tuple(data["default_scopes"]),
            access_token_ttl=data.get("access_token_ttl"),
            refresh_token_ttl=data.get("refresh_token_ttl"),
            secret=data.get("secret"),
        )


@dataclass(frozen=True)
class Audience:
    """An audience URN and its member partner clients."""

    urn: str
    display_name: str
    members: tuple[str, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Audience:
        """Build from broker's JSON."""
        return cls(data["urn"], data["display_name"], tuple(data["members"]))


@dataclass(frozen=True)
class Policy:
    """A tenant's audience policy toward one target."""

    target: str
    target_kind: str
    allowed_scopes: tuple[str, ...] | None
    access_token_ttl: int | None
    refresh_token_ttl: int | None
    webhook_include_refresh_token: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Policy:
        """Build from broker's JSON."""
        scopes = data.get("allowed_scopes")
        return cls(
            target=data["target"],
            target_kind=data["target_kind"],
            allowed_scopes=tuple(scopes) if scopes is not None else None,
            access_token_ttl=data.get("access_token_ttl"),
            refresh_token_ttl=data.get("refresh_token_ttl"),
            webhook_include_refresh_token=bool(data.get("webhook_include_refresh_token", False)),
        )
