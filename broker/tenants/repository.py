"""Queries on tenants and client secrets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select, update

from broker.db.models import ClientSecret, Tenant

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncSession


async def by_client_id(session: AsyncSession, client_id: str) -> Tenant | None:
    """The tenant with ``client_id``."""
    result = await session.execute(select(Tenant).where(Tenant.client_id == client_id))
    return result.scalar_one_or_none()


async def by_id(session: AsyncSession, tenant_id: uuid.UUID) -> Tenant | None:
    """The tenant with primary key ``tenant_id``."""
    return await session.get(Tenant, tenant_id)


async def by_client_ids(session: AsyncSession, client_ids: list[str]) -> dict[str, Tenant]:
    """Tenants keyed by client id, for the ids that exist."""
    if not client_ids:
        return {}
    result = await session.execute(select(Tenant).where(Tenant.client_id.in_(client_ids)))
    return {t.client_id: t for t in result.scalars()}


async def with_live_secrets(session: AsyncSession, client_id: str) -> list[tuple[Tenant, ClientSecret]]:
    """The tenant and each of its unrevoked, unexpired secrets, in one query."""
    result = await session.execute(
        select(Tenant, ClientSecret)
        .join(ClientSecret, ClientSecret.tenant_id == Tenant.id)
        .where(
            Tenant.client_id == client_id,
            ClientSecret.revoked_at.is_(None),
            or_(ClientSecret.expires_at.is_(None), ClientSecret.expires_at > func.now()),
        )
    )
    return [(row[0], row[1]) for row in result.all()]


async def touch_secret(session: AsyncSession, secret_id: uuid.UUID) -> None:
    """Record that a secret was used (callers throttle how often)."""
    await session.execute(update(ClientSecret).where(ClientSecret.id == secret_id).values(last_used_at=func.now()))


async def list_page(session: AsyncSession, *, limit: int, after: str | None, kind: str | None) -> list[Tenant]:
    """Tenants ordered by client id, keyset-paginated."""
    query = select(Tenant).order_by(Tenant.client_id).limit(limit)
    if after:
        query = query.where(Tenant.client_id > after)
    if kind:
        query = query.where(Tenant.kind == kind)
    result = await session.execute(query)
    return list(result.scalars())


async def secrets_of(session: AsyncSession, tenant_id: uuid.UUID) -> list[ClientSecret]:
    """All secrets of a tenant, newest first."""
    result = await session.execute(
        select(ClientSecret).where(ClientSecret.tenant_id == tenant_id).order_by(ClientSecret.created_at.desc())
    )
    return list(result.scalars())


async def lock_by_client_id(session: AsyncSession, client_id: str) -> Tenant | None:
    """The tenant with ``client_id``, locked ``FOR UPDATE`` (serialises secret rotations of one tenant)."""
    result = await session.execute(select(Tenant).where(Tenant.client_id == client_id).with_for_update())
    return result.scalar_one_or_none()


async def expire_live_secrets(session: AsyncSession, tenant_id: uuid.UUID, overlap_seconds: int) -> list[ClientSecret]:
    """Make every live secret of a tenant expire ``overlap_seconds`` from now (sooner ones keep their expiry)."""
    deadline = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, overlap_seconds)
    result = await session.execute(
        update(ClientSecret)
        .where(
            ClientSecret.tenant_id == tenant_id,
            ClientSecret.revoked_at.is_(None),
            or_(ClientSecret.expires_at.is_(None), ClientSecret.expires_at > deadline),
        )
        .values(expires_at=deadline)
        .returning(ClientSecret)
    )
    return list(result.scalars())


async def add_secret(session: AsyncSession, secret: ClientSecret) -> ClientSecret:
    """Insert a secret and load its server-side defaults."""
    session.add(secret)
    await session.flush()
    await session.refresh(secret)
    return secret


async def secret_of(session: AsyncSession, tenant_id: uuid.UUID, secret_id: uuid.UUID) -> ClientSecret | None:
    """One secret of a tenant, locked ``FOR UPDATE``."""
    result = await session.execute(
        select(ClientSecret).where(ClientSecret.id == secret_id, ClientSecret.tenant_id == tenant_id).with_for_update()
    )
    return result.scalar_one_or_none()
