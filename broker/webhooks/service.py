"""Webhook administration: endpoints (create, change, rotate the secret, delete) and the delivery log.

Invariants:
    * An endpoint belongs to exactly one partner client (``client_id``) or one audience (``audience``).
    * The signing secret is shown once, on create and on rotation, and stored only sealed (AAD bound to
      the row and its owner). A rotation with an overlap keeps the previous secret (sealed) until the
      overlap ends, and deliveries are signed with both meanwhile.
    * URLs pass :mod:`broker.webhooks.safety` when registered or changed (and again at every delivery).
    * Every change is audited, naming the endpoint and its host, never the secret.

The caller owns the transaction (``async with session.begin()``), as for the other admin slices.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from broker import errors
from broker.audiences import repository as audiences_repository
from broker.audit import service as audit
from broker.crypto import envelope
from broker.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from broker.db.models.webhook import DELIVERY_STATUSES
from broker.tenants import repository as tenants_repository
from broker.webhooks import outbox, repository, safety, signing

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing
    from broker.settings import Settings

MAX_ENDPOINTS_PER_OWNER = 10
MAX_DESCRIPTION_CHARS = 500
DEFAULT_OVERLAP_SECONDS = 24 * 3600
MAX_OVERLAP_SECONDS = 7 * 24 * 3600
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_ATTEMPTS_SHOWN = 100


@dataclass(frozen=True)
class EndpointSpec:
    """An endpoint as an operator describes it. ``None`` means "leave as is" on update."""

    url: str | None = None
    events: tuple[str, ...] | None = None
    enabled: bool | None = None
    description: str | None = None
    clear_description: bool = False


@dataclass(frozen=True)
class EndpointView:
    """An endpoint with its owner: exactly one of ``client_id`` and ``audience`` is set."""

    endpoint: WebhookEndpoint
    client_id: str | None
    audience: str | None


@dataclass(frozen=True)
class DeliveryView:
    """A delivery with its latest attempts (oldest first)."""

    delivery: WebhookDelivery
    attempts: tuple[WebhookAttempt, ...] = ()


def _view(row: repository.EndpointRow) -> EndpointView:
    return EndpointView(row.endpoint, row.client_id, row.audience)


def _owner_id(endpoint: WebhookEndpoint) -> uuid.UUID:
    owner = endpoint.tenant_id or endpoint.audience_id
    if owner is None:  # pragma: no cover - a check constraint forbids it
        msg = "endpoint without owner"
        raise RuntimeError(msg)
    return owner


def _events(events: tuple[str, ...]) -> list[str]:
    if not events:
        raise errors.ValidationFailed("events must name at least one event type")
    unknown = sorted(set(events) - set(outbox.EVENT_TYPES))
    if unknown:
        raise errors.ValidationFailed(f"unknown event type {unknown[0]!r}; choose from {', '.join(outbox.EVENT_TYPES)}")
    return sorted(set(events))


def _description(description: str) -> str:
    cleaned = description.strip()
    if len(cleaned) > MAX_DESCRIPTION_CHARS:
        raise errors.ValidationFailed(f"description must be at most {MAX_DESCRIPTION_CHARS} characters")
    return cleaned


async def _checked_url(settings: Settings, url: str) -> str:
    try:
        await safety.check_target(
            url, allow_http=settings.webhooks_may_use_http, allow_private=settings.webhooks_may_target_private
        )
    except safety.UnsafeTarget as exc:
        raise errors.ValidationFailed(f"url: {exc}") from None
    return url


def _host(url: str) -> str | None:
    return urlsplit(url).hostname


async def _require(session: AsyncSession, endpoint_id: str, *, lock: bool = False) -> EndpointView:
    row = await repository.endpoint(session, _uuid(endpoint_id, "webhook endpoint"), lock=lock)
    if row is None:
        raise errors.NotFound("no webhook endpoint with that id")
    return _view(row)


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise errors.NotFound(f"no {what} with that id") from None


def _seal_secret(ring: KeyRing, secret: str, owner_id: uuid.UUID, endpoint_id: uuid.UUID, *, previous: bool) -> str:
    aad = outbox.endpoint_secret_aad(owner_id, endpoint_id, previous=previous)
    return envelope.seal(ring, secret.encode(), aad)


async def create_endpoint(
    session: AsyncSession,
    ring: KeyRing,
    settings: Settings,
    spec: EndpointSpec,
    *,
    client_id: str | None,
    audience: str | None,
    actor: str,
    request_id: str | None,
) -> tuple[EndpointView, str]:
    """Register an endpoint for a partner client or an audience; return it and its secret (shown once).

    ``spec.events`` defaults to every event type, ``spec.enabled`` to true.

    Raises:
        ValidationFailed: not exactly one owner, an unknown owner, a refused URL, unknown events.
        Conflict: the owner already has :data:`MAX_ENDPOINTS_PER_OWNER` endpoints.
    """
    if (client_id is None) == (audience is None):
        raise errors.ValidationFailed("give exactly one of client_id and audience")
    if spec.url is None:
        raise errors.ValidationFailed("url is required")
    tenant_id = audience_id = None
    if client_id is not None:
        tenant = await tenants_repository.by_client_id(session, client_id)
        if tenant is None:
            raise errors.ValidationFailed("client_id does not name a client")
        tenant_id = tenant.id
    else:
        found = await audiences_repository.by_urn(session, audience or "")
        if found is None:
            raise errors.ValidationFailed("audience does not name a registered audience")
        audience_id = found.id
    url = await _checked_url(settings, spec.url)
    events = _events(spec.events if spec.events is not None else outbox.EVENT_TYPES)
    if await repository.count_endpoints(session, tenant_id=tenant_id, audience_id=audience_id) >= (
        MAX_ENDPOINTS_PER_OWNER
    ):
        raise errors.Conflict(f"an owner may have at most {MAX_ENDPOINTS_PER_OWNER} webhook endpoints")
    endpoint_id = uuid.uuid4()
    owner_id = tenant_id or audience_id
    assert owner_id is not None  # noqa: S101 - one of them was set above
    secret = signing.new_secret()
    await repository.insert_endpoint(
        session,
        {
            "id": endpoint_id,
            "tenant_id": tenant_id,
            "audience_id": audience_id,
            "url": url,
            "description": _description(spec.description) if spec.description else None,
            "events": events,
            "enabled": True if spec.enabled is None else spec.enabled,
            "secret_enc": _seal_secret(ring, secret, owner_id, endpoint_id, previous=False),
        },
    )
    await audit.record(
        session,
        action="webhook_endpoint.created",
        actor=actor,
        tenant_id=tenant_id,
        request_id=request_id,
        detail={
            "endpoint_id": str(endpoint_id),
            "client_id": client_id,
            "audience": audience,
            "host": _host(url),
            "events": events,
        },
    )
    return await _require(session, str(endpoint_id)), secret


async def list_endpoints(session: AsyncSession, *, client_id: str | None, audience: str | None) -> list[EndpointView]:
    """Every endpoint, or those of one client or one audience (an unknown owner has none)."""
    tenant_id = audience_id = None
    if client_id is not None:
        tenant = await tenants_repository.by_client_id(session, client_id)
        if tenant is None:
            return []
        tenant_id = tenant.id
    if audience is not None:
        found = await audiences_repository.by_urn(session, audience)
        if found is None:
            return []
        audience_id = found.id
    return [_view(row) for row in await repository.endpoints(session, tenant_id=tenant_id, audience_id=audience_id)]


async def get_endpoint(session: AsyncSession, endpoint_id: str) -> EndpointView:
    """One endpoint.

    Raises:
        NotFound: no endpoint has this id.
    """
    return await _require(session, endpoint_id)


async def update_endpoint(
    session: AsyncSession,
    settings: Settings,
    endpoint_id: str,
    spec: EndpointSpec,
    *,
    actor: str,
    request_id: str | None,
) -> EndpointView:
    """Change an endpoint's URL, events, enabled flag or description (absent fields stay).

    Disabling pauses delivery: pending events wait and no new ones are written for the endpoint.

    Raises:
        NotFound: no endpoint has this id.
        ValidationFailed: a refused URL or unknown events.
    """
    view = await _require(session, endpoint_id, lock=True)
    values: dict[str, Any] = {}
    if spec.url is not None:
        values["url"] = await _checked_url(settings, spec.url)
    if spec.events is not None:
        values["events"] = _events(spec.events)
    if spec.enabled is not None:
        values["enabled"] = spec.enabled
    if spec.clear_description:
        values["description"] = None
    elif spec.description is not None:
        values["description"] = _description(spec.description) or None
    if values:
        await repository.update_endpoint(session, view.endpoint.id, values)
        detail = {k: v for k, v in values.items() if k in {"events", "enabled"}}
        if "url" in values:
            detail["host"] = _host(values["url"])
        await audit.record(
            session,
            action="webhook_endpoint.updated",
            actor=actor,
            tenant_id=view.endpoint.tenant_id,
            request_id=request_id,
            detail={"endpoint_id": endpoint_id, "fields": sorted(values), **detail},
        )
    return await _require(session, endpoint_id)


async def rotate_secret(
    session: AsyncSession,
    ring: KeyRing,
    endpoint_id: str,
    *,
    overlap_seconds: int,
    actor: str,
    request_id: str | None,
) -> tuple[EndpointView, str]:
    """Give an endpoint a new signing secret (returned, shown once).

    With ``overlap_seconds`` > 0 the current secret stays valid that long: deliveries carry a signature
    under each secret, so receivers can switch at their pace. With 0 the old secret stops at once.

    Raises:
        NotFound: no endpoint has this id.
        ValidationFailed: the overlap is out of range.
    """
    if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
        raise errors.ValidationFailed(f"overlap_seconds must be between 0 and {MAX_OVERLAP_SECONDS}")
    view = await _require(session, endpoint_id, lock=True)
    endpoint = view.endpoint
    owner_id = _owner_id(endpoint)
    secret = signing.new_secret()
    values: dict[str, Any] = {
        "secret_enc": _seal_secret(ring, secret, owner_id, endpoint.id, previous=False),
        "previous_secret_enc": None,
        "previous_secret_expires_at": None,
    }
    if overlap_seconds > 0:
        current = envelope.open_(ring, endpoint.secret_enc, outbox.endpoint_secret_aad(owner_id, endpoint.id))
        values["previous_secret_enc"] = _seal_secret(ring, current.decode(), owner_id, endpoint.id, previous=True)
        values["previous_secret_expires_at"] = datetime.now(UTC) + timedelta(seconds=overlap_seconds)
    await repository.update_endpoint(session, endpoint.id, values)
    await audit.record(
        session,
        action="webhook_endpoint.secret_rotated",
        actor=actor,
        tenant_id=endpoint.tenant_id,
        request_id=request_id,
        detail={"endpoint_id": endpoint_id, "overlap_seconds": overlap_seconds},
    )
    return await _require(session, endpoint_id), secret


async def delete_endpoint(session: AsyncSession, endpoint_id: str, *, actor: str, request_id: str | None) -> None:
    """Delete an endpoint with its delivery log.

    Raises:
        NotFound: no endpoint has this id.
    """
    view = await _require(session, endpoint_id, lock=True)
    await repository.delete_endpoint(session, view.endpoint.id)
    await audit.record(
        session,
        action="webhook_endpoint.deleted",
        actor=actor,
        tenant_id=view.endpoint.tenant_id,
        request_id=request_id,
        detail={"endpoint_id": endpoint_id, "host": _host(view.endpoint.url)},
    )


async def send_test(session: AsyncSession, endpoint_id: str, *, actor: str, request_id: str | None) -> DeliveryView:
    """Queue a ``webhook.test`` event for one endpoint (sent even when the endpoint is subscribed to nothing).

    Raises:
        NotFound: no endpoint has this id.
    """
    view = await _require(session, endpoint_id)
    delivery_id = uuid.uuid4()
    data = {"endpoint_id": endpoint_id, "recipient": view.client_id or view.audience}
    await repository.insert_deliveries(
        session,
        [
            {
                "id": delivery_id,
                "event_id": outbox.new_event_id(),
                "event_type": outbox.WEBHOOK_TEST,
                "endpoint_id": view.endpoint.id,
                "tenant_id": view.endpoint.tenant_id,
                "payload": outbox.body_payload(outbox.WEBHOOK_TEST, datetime.now(UTC), data),
            }
        ],
    )
    await audit.record(
        session,
        action="webhook_endpoint.tested",
        actor=actor,
        tenant_id=view.endpoint.tenant_id,
        request_id=request_id,
        detail={"endpoint_id": endpoint_id, "delivery_id": str(delivery_id)},
    )
    return await get_delivery(session, str(delivery_id))


# --- deliveries ----------------------------------------------------------------------------------------


def _cursor(delivery: WebhookDelivery) -> str:
    return f"{delivery.created_at.isoformat()}~{delivery.id}"


def _parse_cursor(value: str) -> tuple[datetime, uuid.UUID]:
    moment, _, last_id = value.partition("~")
    try:
        parsed, parsed_id = datetime.fromisoformat(moment), uuid.UUID(last_id)
    except ValueError:
        parsed_id = None
    if parsed_id is None or parsed.tzinfo is None:
        raise errors.ValidationFailed("after is not a cursor this API returned")
    return parsed, parsed_id


async def list_deliveries(
    session: AsyncSession,
    *,
    limit: int = DEFAULT_PAGE_SIZE,
    status: str | None = None,
    endpoint_id: str | None = None,
    event_type: str | None = None,
    event_id: str | None = None,
    after: str | None = None,
) -> tuple[list[WebhookDelivery], str | None]:
    """Deliveries, newest first, filtered; returns a page and the cursor of the next one (or None).

    Raises:
        ValidationFailed: a bad limit, status, endpoint id or cursor.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise errors.ValidationFailed(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    if status is not None and status not in DELIVERY_STATUSES:
        raise errors.ValidationFailed(f"status must be one of {', '.join(DELIVERY_STATUSES)}")
    endpoint_uuid = None
    if endpoint_id is not None:
        try:
            endpoint_uuid = uuid.UUID(endpoint_id)
        except ValueError:
            raise errors.ValidationFailed("endpoint_id is not a webhook endpoint id") from None
    rows = await repository.deliveries(
        session,
        limit=limit + 1,
        status=status,
        endpoint_id=endpoint_uuid,
        event_type=event_type,
        event_id=event_id,
        before=_parse_cursor(after) if after is not None else None,
    )
    page = rows[:limit]
    return page, (_cursor(page[-1]) if len(rows) > limit else None)


async def get_delivery(session: AsyncSession, delivery_id: str) -> DeliveryView:
    """One delivery with its latest attempts.

    Raises:
        NotFound: no delivery has this id.
    """
    found = await repository.delivery(session, _uuid(delivery_id, "webhook delivery"))
    if found is None:
        raise errors.NotFound("no webhook delivery with that id")
    return DeliveryView(found, tuple(await repository.attempts(session, found.id, limit=MAX_ATTEMPTS_SHOWN)))


async def redeliver(session: AsyncSession, delivery_id: str, *, actor: str, request_id: str | None) -> DeliveryView:
    """Send a delivery again (same event id), now, with a fresh retry budget.

    Raises:
        NotFound: no delivery has this id.
        Conflict: the delivery is being attempted right now.
    """
    found = await repository.delivery(session, _uuid(delivery_id, "webhook delivery"), lock=True)
    if found is None:
        raise errors.NotFound("no webhook delivery with that id")
    if found.claim_id is not None and found.locked_until is not None and found.locked_until > datetime.now(UTC):
        raise errors.Conflict("this delivery is being attempted right now; retry shortly")
    await repository.requeue(session, found.id)
    await audit.record(
        session,
        action="webhook_delivery.redelivered",
        actor=actor,
        tenant_id=found.tenant_id,
        request_id=request_id,
        detail={"delivery_id": delivery_id, "event_id": found.event_id, "previous_status": found.status},
    )
    return await get_delivery(session, delivery_id)


async def redeliver_dead(session: AsyncSession, *, endpoint_id: str | None, actor: str, request_id: str | None) -> int:
    """Requeue every dead-lettered delivery (of one endpoint, or all); return how many.

    Raises:
        NotFound: ``endpoint_id`` names no endpoint.
    """
    endpoint_uuid = None
    if endpoint_id is not None:
        endpoint_uuid = (await _require(session, endpoint_id)).endpoint.id
    count = await repository.requeue_dead(session, endpoint_id=endpoint_uuid)
    await audit.record(
        session,
        action="webhook_delivery.redelivered_dead",
        actor=actor,
        tenant_id=None,
        request_id=request_id,
        detail={"endpoint_id": endpoint_id, "count": count},
    )
    return count


# --- key ring maintenance (for ``broker keys status`` / ``reencrypt``) ---------------------------------


async def secret_key_usage(session: AsyncSession) -> dict[str, int]:
    """How many endpoint signing secrets each ring key id protects (a key in use must not be retired)."""
    return await repository.secret_key_ids(session)


async def reencrypt_secrets(session: AsyncSession, ring: KeyRing, *, batch: int = 500) -> int:
    """Reseal up to ``batch`` endpoint secrets under the ring's active key; return how many were moved.

    Call repeatedly (each call in its own transaction) until it returns 0. Rows are locked and locked
    rows skipped, so it may run beside traffic and on several replicas.
    """
    kid, _ = ring.active
    moved = 0
    for endpoint in await repository.endpoints_not_under(session, kid, limit=batch):
        owner_id = _owner_id(endpoint)
        values: dict[str, Any] = {}
        for column, previous in (("secret_enc", False), ("previous_secret_enc", True)):
            sealed = getattr(endpoint, column)
            if sealed is None or envelope.key_id_of(sealed) == kid:
                continue
            aad = outbox.endpoint_secret_aad(owner_id, endpoint.id, previous=previous)
            values[column] = envelope.seal(ring, envelope.open_(ring, sealed, aad), aad)
        if values:
            await repository.update_endpoint(session, endpoint.id, values)
            moved += 1
    return moved
