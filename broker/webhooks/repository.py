"""Webhook queries: endpoints, recipients of an event, the outbox (claim, record, redeliver) and attempts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Integer,
    Interval,
    Text,
    Uuid,
    and_,
    any_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    union,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP

from broker.db.models import (
    Audience,
    AudienceMember,
    Grant,
    GrantParty,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class EndpointRow:
    """An endpoint with its owner rendered: the client id or the audience URN."""

    endpoint: WebhookEndpoint
    client_id: str | None
    audience: str | None


@dataclass(frozen=True)
class Subscriber:
    """One endpoint subscribed to an event for one recipient tenant."""

    endpoint_id: uuid.UUID
    tenant_id: uuid.UUID
    client_id: str


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery leased to one worker, with what it needs to sign and post (sealed values still sealed)."""

    id: uuid.UUID
    claim_id: uuid.UUID
    event_id: str
    event_type: str
    payload: dict[str, Any]
    token_enc: str | None
    tenant_id: uuid.UUID | None
    failures: int
    endpoint_id: uuid.UUID
    endpoint_owner_id: uuid.UUID
    url: str
    secret_enc: str
    previous_secret_enc: str | None
    previous_secret_expires_at: datetime | None


def _uuids(name: str, values: Sequence[uuid.UUID]) -> Any:  # noqa: ANN401 - a SQL expression
    return any_(bindparam(name, list(values), type_=ARRAY(Uuid())))


# --- endpoints -----------------------------------------------------------------------------------------


def _endpoints_query() -> Any:  # noqa: ANN401 - a SQL statement
    return (
        select(WebhookEndpoint, Tenant.client_id, Audience.urn)
        .outerjoin(Tenant, Tenant.id == WebhookEndpoint.tenant_id)
        .outerjoin(Audience, Audience.id == WebhookEndpoint.audience_id)
    )


async def insert_endpoint(session: AsyncSession, values: dict[str, Any]) -> None:
    """Insert one endpoint row."""
    await session.execute(insert(WebhookEndpoint).values(**values))


async def endpoint(session: AsyncSession, endpoint_id: uuid.UUID, *, lock: bool = False) -> EndpointRow | None:
    """One endpoint with its owner (optionally locked ``FOR UPDATE``)."""
    query = _endpoints_query().where(WebhookEndpoint.id == endpoint_id)
    if lock:
        query = query.with_for_update(of=WebhookEndpoint)
    row = (await session.execute(query.execution_options(populate_existing=True))).one_or_none()
    return None if row is None else EndpointRow(row[0], row[1], row[2])


async def endpoints(
    session: AsyncSession, *, tenant_id: uuid.UUID | None = None, audience_id: uuid.UUID | None = None
) -> list[EndpointRow]:
    """Endpoints (all, or one owner's), oldest first."""
    query = _endpoints_query().order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    if tenant_id is not None:
        query = query.where(WebhookEndpoint.tenant_id == tenant_id)
    if audience_id is not None:
        query = query.where(WebhookEndpoint.audience_id == audience_id)
    return [EndpointRow(row[0], row[1], row[2]) for row in (await session.execute(query)).all()]


async def count_endpoints(session: AsyncSession, *, tenant_id: uuid.UUID | None, audience_id: uuid.UUID | None) -> int:
    """How many endpoints one owner has."""
    query = select(func.count()).select_from(WebhookEndpoint)
    if tenant_id is not None:
        query = query.where(WebhookEndpoint.tenant_id == tenant_id)
    else:
        query = query.where(WebhookEndpoint.audience_id == audience_id)
    return int((await session.execute(query)).scalar_one())


async def update_endpoint(session: AsyncSession, endpoint_id: uuid.UUID, values: dict[str, Any]) -> None:
    """Change an endpoint and stamp ``updated_at``."""
    await session.execute(
        update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).values(**values, updated_at=func.now())
    )


async def delete_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> bool:
    """Delete an endpoint (its deliveries and attempts go with it); False if there was none."""
    result = await session.execute(
        delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).returning(WebhookEndpoint.id)
    )
    return result.first() is not None


# --- recipients and the outbox -------------------------------------------------------------------------


def _subscribed(event_type: str) -> Any:  # noqa: ANN401 - a SQL expression
    return and_(WebhookEndpoint.enabled, literal(event_type) == any_(WebhookEndpoint.events))


async def subscribers(
    session: AsyncSession,
    event_type: str,
    *,
    tenant_ids: Sequence[uuid.UUID] = (),
    grant_ids: Sequence[uuid.UUID] = (),
    user: tuple[uuid.UUID, uuid.UUID] | None = None,
) -> list[Subscriber]:
    """The enabled endpoints subscribed to ``event_type`` for each recipient tenant, in one statement.

    Recipients are ``tenant_ids``, plus the holders and active parties of ``grant_ids``, plus the holders
    and parties of every grant of ``user`` (``(tenant_id, user_pk)``). A recipient's endpoints are its
    own and those of every audience it is a member of; each (endpoint, recipient) pair appears once.
    When no enabled endpoint subscribes to ``event_type`` at all, a one-time filter ends the statement
    before any recipient is looked up, so an event nobody listens to costs one cheap round trip.
    """
    sources: list[Any] = []
    if tenant_ids:
        sources.append(select(func.unnest(bindparam("tenant_ids", list(tenant_ids), type_=ARRAY(Uuid())))))
    if grant_ids:
        sources.append(
            select(Grant.holder_tenant_id).where(
                Grant.id == _uuids("grant_ids", grant_ids), Grant.holder_tenant_id.is_not(None)
            )
        )
        sources.append(
            select(GrantParty.tenant_id).where(
                GrantParty.grant_id == _uuids("party_grant_ids", grant_ids), GrantParty.withdrawn_at.is_(None)
            )
        )
    if user is not None:
        owner_id, user_pk = user
        sources.append(
            select(Grant.holder_tenant_id).where(
                Grant.tenant_id == owner_id, Grant.user_pk == user_pk, Grant.holder_tenant_id.is_not(None)
            )
        )
        sources.append(
            select(GrantParty.tenant_id)
            .join(Grant, Grant.id == GrantParty.grant_id)
            .where(Grant.tenant_id == owner_id, Grant.user_pk == user_pk)
        )
    if not sources:
        return []
    recipients = union_all(*sources).cte("recipients")
    anyone = exists().where(_subscribed(event_type))
    recipient_ids = select(recipients.c[0])
    direct = (
        select(WebhookEndpoint.id, Tenant.id, Tenant.client_id)
        .join(Tenant, Tenant.id == WebhookEndpoint.tenant_id)
        .where(anyone, _subscribed(event_type), Tenant.id.in_(recipient_ids))
    )
    through_audience = (
        select(WebhookEndpoint.id, Tenant.id, Tenant.client_id)
        .join(AudienceMember, AudienceMember.audience_id == WebhookEndpoint.audience_id)
        .join(Tenant, Tenant.id == AudienceMember.tenant_id)
        .where(anyone, _subscribed(event_type), Tenant.id.in_(recipient_ids))
    )
    rows = (await session.execute(union(direct, through_audience))).all()
    return [Subscriber(row[0], row[1], row[2]) for row in rows]


async def insert_deliveries(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert outbox rows in one statement."""
    if rows:
        await session.execute(insert(WebhookDelivery), rows)


async def claim_due(session: AsyncSession, *, limit: int, lease: timedelta) -> list[ClaimedDelivery]:
    """Lease up to ``limit`` due deliveries of enabled endpoints to a new claim, in one statement.

    ``FOR UPDATE SKIP LOCKED`` lets concurrent workers claim disjoint rows; the lease (``locked_until``)
    keeps the row away from other workers after this transaction commits, while the HTTP call runs. A
    lease that expires (the worker died) makes the row due again.
    """
    claim_id = uuid.uuid4()
    now = func.now()
    due = (
        select(WebhookDelivery.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until <= now),
            WebhookEndpoint.enabled,
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(of=WebhookDelivery, skip_locked=True)
        .cte("due")
    )
    statement = (
        update(WebhookDelivery)
        .where(WebhookDelivery.id == due.c.id, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .values(
            locked_until=now + bindparam("lease", lease, type_=Interval()),
            claim_id=claim_id,
            attempt_count=WebhookDelivery.attempt_count + 1,
            last_attempt_at=now,
        )
        .returning(
            WebhookDelivery.id,
            WebhookDelivery.event_id,
            WebhookDelivery.event_type,
            WebhookDelivery.payload,
            WebhookDelivery.token_enc,
            WebhookDelivery.tenant_id,
            WebhookDelivery.failures,
            WebhookEndpoint.id,
            func.coalesce(WebhookEndpoint.tenant_id, WebhookEndpoint.audience_id),
            WebhookEndpoint.url,
            WebhookEndpoint.secret_enc,
            WebhookEndpoint.previous_secret_enc,
            WebhookEndpoint.previous_secret_expires_at,
        )
    )
    rows = (await session.execute(statement)).all()
    return [ClaimedDelivery(row[0], claim_id, *row[1:]) for row in rows]


async def record_attempt(
    session: AsyncSession,
    delivery_id: uuid.UUID,
    *,
    attempted_at: datetime,
    duration_ms: int,
    status_code: int | None,
    response_body: str | None,
    error: str | None,
) -> None:
    """Keep one attempt (skipped when the delivery was deleted meanwhile)."""
    await session.execute(
        insert(WebhookAttempt).from_select(
            ["delivery_id", "attempted_at", "duration_ms", "status_code", "response_body", "error"],
            select(
                WebhookDelivery.id,
                literal(attempted_at, TIMESTAMP(timezone=True)),
                literal(duration_ms, Integer()),
                literal(status_code, Integer()),
                literal(response_body, Text()),
                literal(error, Text()),
            ).where(WebhookDelivery.id == delivery_id),
        )
    )


async def finish(
    session: AsyncSession,
    delivery_id: uuid.UUID,
    claim_id: uuid.UUID,
    *,
    status: str,
    failures: int,
    retry_in: timedelta | None,
    status_code: int | None,
    error: str | None,
) -> bool:
    """Release a claim with the attempt's outcome; False when the claim was lost (lease expired, redelivered).

    ``status`` is ``delivered``, ``dead`` or ``pending`` (then due again after ``retry_in``).
    """
    values: dict[str, Any] = {
        "status": status,
        "failures": failures,
        "locked_until": None,
        "claim_id": None,
        "last_status_code": status_code,
        "last_error": error,
    }
    if status == "delivered":
        values["delivered_at"] = func.now()
    if retry_in is not None:
        values["next_attempt_at"] = func.now() + bindparam("retry_in", retry_in, type_=Interval())
    result = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.claim_id == claim_id)
        .values(**values)
        .returning(WebhookDelivery.id)
    )
    return result.first() is not None


# --- admin views of the outbox -------------------------------------------------------------------------


async def deliveries(
    session: AsyncSession,
    *,
    limit: int,
    status: str | None = None,
    endpoint_id: uuid.UUID | None = None,
    event_type: str | None = None,
    event_id: str | None = None,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[WebhookDelivery]:
    """Deliveries, newest first, filtered; ``before`` is the (created_at, id) keyset cursor."""
    query = select(WebhookDelivery).order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if endpoint_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    if event_type is not None:
        query = query.where(WebhookDelivery.event_type == event_type)
    if event_id is not None:
        query = query.where(WebhookDelivery.event_id == event_id)
    if before is not None:
        created_at, last_id = before
        query = query.where(
            or_(
                WebhookDelivery.created_at < created_at,
                and_(WebhookDelivery.created_at == created_at, WebhookDelivery.id < last_id),
            )
        )
    return list((await session.execute(query.limit(limit))).scalars())


async def delivery(session: AsyncSession, delivery_id: uuid.UUID, *, lock: bool = False) -> WebhookDelivery | None:
    """One delivery (optionally locked ``FOR UPDATE``), read fresh."""
    query = select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query.execution_options(populate_existing=True))).scalar_one_or_none()


async def attempts(session: AsyncSession, delivery_id: uuid.UUID, *, limit: int) -> list[WebhookAttempt]:
    """The latest ``limit`` attempts of a delivery, oldest first."""
    latest = (
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == delivery_id)
        .order_by(WebhookAttempt.id.desc())
        .limit(limit)
    )
    return sorted((await session.execute(latest)).scalars(), key=lambda a: a.id)


async def requeue(session: AsyncSession, delivery_id: uuid.UUID) -> None:
    """Make a delivery due now with a fresh retry budget (the event id stays the same)."""
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(status="pending", failures=0, next_attempt_at=func.now(), locked_until=None, claim_id=None)
    )


async def requeue_dead(session: AsyncSession, *, endpoint_id: uuid.UUID | None) -> int:
    """Requeue every dead-lettered delivery (of one endpoint, or all); return how many."""
    query = update(WebhookDelivery).where(WebhookDelivery.status == "dead")
    if endpoint_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    result = await session.execute(
        query.values(status="pending", failures=0, next_attempt_at=func.now(), locked_until=None, claim_id=None)
        .returning(WebhookDelivery.id)
        .execution_options(synchronize_session=False)
    )
    return len(result.all())


# --- key ring maintenance ------------------------------------------------------------------------------


async def secret_key_ids(session: AsyncSession) -> dict[str, int]:
    """How many sealed signing secrets (current and previous) each ring key id protects."""
    kid = func.split_part(WebhookEndpoint.secret_enc, ".", 2)
    previous = func.split_part(WebhookEndpoint.previous_secret_enc, ".", 2)
    current_rows = (await session.execute(select(kid, func.count()).group_by(kid))).all()
    previous_rows = (
        await session.execute(
            select(previous, func.count()).where(WebhookEndpoint.previous_secret_enc.is_not(None)).group_by(previous)
        )
    ).all()
    counts: dict[str, int] = {}
    for key_id, count in [*current_rows, *previous_rows]:
        counts[str(key_id)] = counts.get(str(key_id), 0) + int(count)
    return counts


async def endpoints_not_under(session: AsyncSession, kid: str, *, limit: int) -> list[WebhookEndpoint]:
    """Up to ``limit`` endpoints with a secret sealed under another key than ``kid``, locked, skipping locked."""
    prefix = f"v1.{kid}."
    query = (
        select(WebhookEndpoint)
        .where(
            or_(
                ~WebhookEndpoint.secret_enc.startswith(prefix, autoescape=True),
                and_(
                    WebhookEndpoint.previous_secret_enc.is_not(None),
                    ~WebhookEndpoint.previous_secret_enc.startswith(prefix, autoescape=True),
                ),
            )
        )
        .order_by(WebhookEndpoint.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(query.execution_options(populate_existing=True))).scalars())
