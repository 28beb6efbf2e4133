"""Admin API bodies for webhook endpoints and deliveries. Secrets appear once: on create and rotation."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET, UnsetType

if TYPE_CHECKING:
    from broker.db.models import WebhookAttempt, WebhookDelivery
    from broker.webhooks.service import DeliveryView, EndpointView


class EndpointCreate(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    client_id: str | None = None
    """The partner client whose events this endpoint receives (give this or ``audience``)."""
    audience: str | None = None
    """An audience URN: events of every member client (give this or ``client_id``)."""
    events: list[str] | None = None
    """Event types to receive; all of them when omitted."""
    enabled: bool = True
    description: str | None = None


class EndpointUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Absent fields stay as they are; ``description: null`` clears it."""

    url: str | UnsetType = UNSET
    events: list[str] | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET
    description: str | UnsetType | None = UNSET


class SecretRotation(msgspec.Struct, forbid_unknown_fields=True):
    overlap_seconds: int = 24 * 3600
    """How long the previous secret keeps signing too (0 ends it at once)."""


class RedeliverDead(msgspec.Struct, forbid_unknown_fields=True):
    endpoint_id: str | None = None


class EndpointOut(msgspec.Struct):
    id: str
    url: str
    client_id: str | None
    audience: str | None
    events: list[str]
    enabled: bool
    description: str | None
    previous_secret_expires_at: datetime | None
    """While set and in the future, deliveries are signed with the previous secret too."""
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(EndpointOut):
    secret: str
    """``whsec_...``: shown once; broker keeps it only encrypted."""


class EndpointList(msgspec.Struct):
    data: list[EndpointOut]


class AttemptOut(msgspec.Struct):
    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    response_body: str | None
    """The first 2,048 characters of the response."""
    error: str | None


class DeliveryOut(msgspec.Struct):
    id: str
    event_id: str
    """The ``webhook-id`` header: the same on every retry and redelivery."""
    event_type: str
    endpoint_id: str
    status: str
    """``pending``, ``delivered`` or ``dead`` (dead-lettered: retries ran out)."""
    attempt_count: int
    failures: int
    """Failed attempts since the event was queued or last redelivered."""
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    payload: dict[str, Any]
    """The event as sent (a shared refresh token, when included, is never shown here)."""
    attempts: list[AttemptOut] | None = None


class DeliveryPage(msgspec.Struct):
    data: list[DeliveryOut]
    next_after: str | None
    """Pass as ``after`` to get the next page; null on the last page."""


class RedeliveredCount(msgspec.Struct):
    redelivered: int


def endpoint_out(view: EndpointView) -> EndpointOut:
    return EndpointOut(**_endpoint_fields(view))


def endpoint_with_secret(view: EndpointView, secret: str) -> EndpointWithSecret:
    return EndpointWithSecret(**_endpoint_fields(view), secret=secret)


def _endpoint_fields(view: EndpointView) -> dict[str, Any]:
    endpoint = view.endpoint
    return {
        "id": str(endpoint.id),
        "url": endpoint.url,
        "client_id": view.client_id,
        "audience": view.audience,
        "events": list(endpoint.events),
        "enabled": endpoint.enabled,
        "description": endpoint.description,
        "previous_secret_expires_at": endpoint.previous_secret_expires_at,
        "created_at": endpoint.created_at,
        "updated_at": endpoint.updated_at,
    }


def attempt_out(attempt: WebhookAttempt) -> AttemptOut:
    return AttemptOut(
        attempted_at=attempt.attempted_at,
        duration_ms=attempt.duration_ms,
        status_code=attempt.status_code,
        response_body=attempt.response_body,
        error=attempt.error,
    )


def delivery_out(delivery: WebhookDelivery, attempts: list[AttemptOut] | None = None) -> DeliveryOut:
    return DeliveryOut(
        id=str(delivery.id),
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        endpoint_id=str(delivery.endpoint_id),
        status=delivery.status,
        attempt_count=delivery.attempt_count,
        failures=delivery.failures,
        next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
        last_attempt_at=delivery.last_attempt_at,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        delivered_at=delivery.delivered_at,
        created_at=delivery.created_at,
        payload=delivery.payload,
        attempts=attempts,
    )


def delivery_view_out(view: DeliveryView) -> DeliveryOut:
    return delivery_out(view.delivery, [attempt_out(a) for a in view.attempts])
