"""Queries on admin API keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, select, update

from broker.db.models import AdminKey

if TYPE_CHECKING:
    import uuid
    from datetime import timedelta

    from sqlalchemy.ext.asyncio import AsyncSession


async def by_digest(session: AsyncSession, digest: bytes) -> AdminKey | None:
    """The key whose keyed digest is ``digest`` (revoked or not)."""
    result = await session.execute(select(AdminKey).where(AdminKey.digest == digest))
    return result.scalar_one_or_none()


async def by_id(session: AsyncSession, key_id: uuid.UUID) -> AdminKey | None:
    """The key with primary key ``key_id``."""
    return await session.get(AdminKey, key_id)


async def lock_name(session: AsyncSession, name: str) -> None:
    """Serialise key creation per name until the transaction ends (names have no unique constraint)."""
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended("admin_key:" + name, 0))))


async def live_name_exists(session: AsyncSession, name: str) -> bool:
    """Whether an unrevoked key already carries ``name``."""
    result = await session.execute(
        select(AdminKey.id).where(AdminKey.name == name, AdminKey.revoked_at.is_(None)).limit(1)
    )
    return result.first() is not None


async def list_all(session: AsyncSession) -> list[AdminKey]:
    """Every key, oldest first."""
    result = await session.execute(select(AdminKey).order_by(AdminKey.created_at, AdminKey.id))
    return list(result.scalars())


async def add(session: AsyncSession, key: AdminKey) -> AdminKey:
    """Insert ``key`` and load its server-side defaults."""
    session.add(key)
    await session.flush()
    await session.refresh(key)
    return key


async def touch(session: AsyncSession, key_id: uuid.UUID, interval: timedelta) -> None:
    """Set ``last_used_at`` to now unless it was set less than ``interval`` ago (one statement, race-safe)."""
    await session.execute(
        update(AdminKey)
        .where(
            AdminKey.id == key_id,
            (AdminKey.last_used_at.is_(None)) | (AdminKey.last_used_at < func.now() - interval),
        )
        .values(last_used_at=func.now())
    )
