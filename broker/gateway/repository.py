"""Queries of the gateway tables: tenant upstreams, upstream grants and the upstream call outbox."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, exists, func, insert, select, text, update
from sqlalchemy.orm import aliased

from broker.db.models import AccessToken, Grant, Tenant, TenantUpstream, UpstreamCall, UpstreamGrant

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence
    from datetime import datetime

    from sqlalchemy.engine import Row
    from sqlalchemy.ext.asyncio import AsyncSession


async def upstream_of(session: AsyncSession, tenant_id: uuid.UUID) -> TenantUpstream | None:
    """The upstream row of a tenant, if it has one."""
    result = await session.execute(select(TenantUpstream).where(TenantUpstream.tenant_id == tenant_id))
    return result.scalar_one_or_none()


async def upstream_client_ids(
    session: AsyncSession, client_ids: Sequence[str], base_url: str
) -> dict[str, tuple[uuid.UUID, str]]:
    """Local client id → (tenant id, client id at ``base_url``) for the tenants that have that upstream."""
    result = await session.execute(
        select(Tenant.client_id, Tenant.id, TenantUpstream.client_id)
        .join(TenantUpstream, TenantUpstream.tenant_id == Tenant.id)
        .where(Tenant.client_id.in_(list(client_ids)), TenantUpstream.base_url == base_url)
    )
    return {row[0]: (row[1], row[2]) for row in result.all()}


async def with_upstream(session: AsyncSession, tenant_ids: Sequence[uuid.UUID], base_url: str) -> set[uuid.UUID]:
    """Which of ``tenant_ids`` have an identity at ``base_url``."""
    result = await session.execute(
        select(TenantUpstream.tenant_id).where(
            TenantUpstream.tenant_id.in_(list(tenant_ids)), TenantUpstream.base_url == base_url
        )
    )
    return set(result.scalars())


async def save_upstream(session: AsyncSession, values: dict[str, Any]) -> None:
    """Insert or replace a tenant's upstream and bump the tenant's ``updated_at`` (cached snapshots expire)."""
    existing = await upstream_of(session, values["tenant_id"])
    if existing is None:
        await session.execute(insert(TenantUpstream).values(**values))
    else:
        changes = {k: v for k, v in values.items() if k not in {"id", "tenant_id"}}
        await session.execute(
            update(TenantUpstream)
            .where(TenantUpstream.tenant_id == values["tenant_id"])
            .values(**changes, updated_at=text("now()"))
        )
    await _bump(session, values["tenant_id"])


async def delete_upstream(session: AsyncSession, tenant_id: uuid.UUID) -> bool:
    """Remove a tenant's upstream; whether it had one."""
    result = await session.execute(
        delete(TenantUpstream).where(TenantUpstream.tenant_id == tenant_id).returning(TenantUpstream.id)
    )
    removed = result.first() is not None
    if removed:
        await _bump(session, tenant_id)
    return removed


async def _bump(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    # clock_timestamp(), not now(): two changes in one transaction still differ from any cached snapshot.
    await session.execute(update(Tenant).where(Tenant.id == tenant_id).values(updated_at=text("clock_timestamp()")))


async def insert_upstream_grant(session: AsyncSession, values: dict[str, Any]) -> None:
    """Record what the upstream issued for a new local grant."""
    await session.execute(insert(UpstreamGrant).values(**values))


async def upstream_grant(session: AsyncSession, grant_id: uuid.UUID, *, lock: bool = False) -> UpstreamGrant | None:
    """The upstream record of a grant (locked ``FOR UPDATE`` when asked)."""
    statement = select(UpstreamGrant).where(UpstreamGrant.id == grant_id)
    if lock:
        statement = statement.with_for_update()
    result = await session.execute(statement)
    return result.scalar_one_or_none()


async def take_lease(session: AsyncSession, grant_id: uuid.UUID, now: datetime, seconds: float) -> bool:
    """Take the refresh lease of a grant unless another request holds a live one."""
    result = await session.execute(
        update(UpstreamGrant)
        .where(
            UpstreamGrant.id == grant_id,
            (UpstreamGrant.lease_until.is_(None)) | (UpstreamGrant.lease_until <= now),
        )
        .values(lease_until=now + timedelta(seconds=seconds))
        .returning(UpstreamGrant.id)
    )
    return result.first() is not None


async def release(
    session: AsyncSession, grant_id: uuid.UUID, *, token_enc: str | None = None, upstream_request_id: str | None = None
) -> None:
    """Clear the refresh lease, storing the upstream's rotated refresh token when there is one."""
    values: dict[str, Any] = {"lease_until": None}
    if token_enc is not None:
        values.update(token_enc=token_enc, updated_at=text("now()"), upstream_request_id=upstream_request_id)
    await session.execute(update(UpstreamGrant).where(UpstreamGrant.id == grant_id).values(**values))


async def grant_live(session: AsyncSession, grant_id: uuid.UUID) -> bool:
    """Whether a grant and every ancestor in its path are unrevoked."""
    ancestor = aliased(Grant, name="ancestor")
    dead = exists().where(ancestor.id == func.any(Grant.path), ancestor.revoked_at.is_not(None))
    result = await session.execute(select(Grant.revoked_at.is_(None) & ~dead).where(Grant.id == grant_id))
    return bool(result.scalar_one_or_none())


async def insert_access(session: AsyncSession, values: dict[str, Any]) -> None:
    """Insert an access token row alone (the upstream kept its refresh token as it was)."""
    await session.execute(insert(AccessToken).values(**values))


async def live_grants_of_user(session: AsyncSession, tenant_id: uuid.UUID, user_id: str) -> list[uuid.UUID]:
    """The tenant's unrevoked gateway grants whose upstream subject is ``user_id``."""
    result = await session.execute(
        select(UpstreamGrant.id)
        .join(Grant, Grant.id == UpstreamGrant.id)
        .where(UpstreamGrant.tenant_id == tenant_id, UpstreamGrant.user_id == user_id, Grant.revoked_at.is_(None))
    )
    return list(result.scalars())


# --- the upstream call outbox ---------------------------------------------------------------------------


async def insert_call(session: AsyncSession, values: dict[str, Any]) -> None:
    """Queue an upstream call (it is due at once)."""
    await session.execute(insert(UpstreamCall).values(**values))


async def claim_calls(
    session: AsyncSession, *, now: datetime, lease_seconds: float, limit: int, call_id: uuid.UUID | None = None
) -> Sequence[Row[Any]]:
    """Claim due calls (``FOR UPDATE SKIP LOCKED``) by pushing their next attempt past a lease.

    No lock is held after the transaction: a claimed call is invisible to other workers until its
    lease ends, so a worker that dies mid-call only delays the retry.
    """
    due = (
        select(UpstreamCall.id)
        .where(UpstreamCall.completed_at.is_(None), UpstreamCall.next_attempt_at <= now)
        .order_by(UpstreamCall.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if call_id is not None:
        due = due.where(UpstreamCall.id == call_id)
    result = await session.execute(
        update(UpstreamCall)
        .where(UpstreamCall.id.in_(due.scalar_subquery()))
        .values(next_attempt_at=now + timedelta(seconds=lease_seconds), attempts=UpstreamCall.attempts + 1)
        .returning(
            UpstreamCall.id,
            UpstreamCall.tenant_id,
            UpstreamCall.operation,
            UpstreamCall.payload_enc,
            UpstreamCall.attempts,
            UpstreamCall.request_id,
        )
    )
    rows: Sequence[Row[Any]] = result.all()  # type: ignore[assignment] # the typed tuple is a Row[Any]
    return rows


async def finish_call(
    session: AsyncSession,
    call_id: uuid.UUID,
    *,
    completed_at: datetime | None,
    next_attempt_at: datetime | None,
    status: int | None,
    error: str | None,
) -> None:
    """Record an attempt: completed, or due again at ``next_attempt_at``."""
    values: dict[str, Any] = {"last_status": status, "last_error": error}
    if completed_at is not None:
        values["completed_at"] = completed_at
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    await session.execute(update(UpstreamCall).where(UpstreamCall.id == call_id).values(**values))


async def pending_calls(session: AsyncSession, tenant_id: uuid.UUID | None = None) -> int:
    """How many upstream calls are not yet confirmed (for status and tests)."""
    statement = select(UpstreamCall.id).where(UpstreamCall.completed_at.is_(None))
    if tenant_id is not None:
        statement = statement.where(UpstreamCall.tenant_id == tenant_id)
    result = await session.execute(statement)
    return len(result.all())
