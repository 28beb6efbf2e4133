"""Queries for the grants admin: lineage trees through the GIN-indexed ``path``, parties, names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import aliased

from broker.db.models import Grant, GrantParty, Tenant, User

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession

_ancestor = aliased(Grant, name="ancestor")


async def by_id(session: AsyncSession, grant_id: uuid.UUID, *, lock: bool = False) -> Grant | None:
    """One grant (``FOR UPDATE`` with ``lock``)."""
    query = select(Grant).where(Grant.id == grant_id)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def ancestor_revoked(session: AsyncSession, grant: Grant) -> bool:
    """Whether any ancestor of ``grant`` is revoked."""
    if not grant.path:
        return False
    result = await session.execute(
        select(exists().where(_ancestor.id == func.any(grant.path), _ancestor.revoked_at.is_not(None)))
    )
    return bool(result.scalar())


async def subtrees(session: AsyncSession, root_ids: Sequence[uuid.UUID]) -> list[Grant]:
    """The grants ``root_ids`` and every descendant of them (path overlap, GIN-indexed)."""
    if not root_ids:
        return []
    roots = list(root_ids)
    result = await session.execute(
        select(Grant).where(or_(Grant.id.in_(roots), Grant.path.overlap(roots))).order_by(Grant.created_at, Grant.id)
    )
    return list(result.scalars())


async def of_user(session: AsyncSession, tenant_id: uuid.UUID, user_pk: uuid.UUID) -> list[Grant]:
    """Every grant whose subject is the user (derived grants inherit it), oldest first."""
    result = await session.execute(
        select(Grant).where(Grant.tenant_id == tenant_id, Grant.user_pk == user_pk).order_by(Grant.created_at, Grant.id)
    )
    return list(result.scalars())


async def tenant_roots(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
    live: bool | None,
) -> list[Grant]:
    """Root grants a tenant owns (it requested them for its own data), newest first, keyset-paginated.

    Roots are requested by their owner, so the ``requester_tenant_id`` index narrows the scan.
    """
    query = select(Grant).where(
        Grant.requester_tenant_id == tenant_id, Grant.tenant_id == tenant_id, Grant.parent_id.is_(None)
    )
    if before is not None:
        created, grant_id = before
        query = query.where(or_(Grant.created_at < created, and_(Grant.created_at == created, Grant.id < grant_id)))
    if live is True:
        query = query.where(Grant.revoked_at.is_(None))
    elif live is False:
        query = query.where(Grant.revoked_at.is_not(None))
    query = query.order_by(Grant.created_at.desc(), Grant.id.desc()).limit(limit)
    return list((await session.execute(query)).scalars())


async def parties(session: AsyncSession, grant_ids: Sequence[uuid.UUID]) -> list[GrantParty]:
    """The party rows of the given grants."""
    if not grant_ids:
        return []
    result = await session.execute(
        select(GrantParty).where(GrantParty.grant_id.in_(list(grant_ids))).order_by(GrantParty.via)
    )
    return list(result.scalars())


async def client_ids(session: AsyncSession, tenant_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Client ids by tenant id."""
    wanted = {t for t in tenant_ids if t is not None}
    if not wanted:
        return {}
    result = await session.execute(select(Tenant.id, Tenant.client_id).where(Tenant.id.in_(wanted)))
    return {i: str(c) for i, c in result.all()}


async def user_ids(session: AsyncSession, user_pks: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Public user ids by user primary key."""
    wanted = {u for u in user_pks if u is not None}
    if not wanted:
        return {}
    result = await session.execute(select(User.id, User.user_id).where(User.id.in_(wanted)))
    return {i: str(u) for i, u in result.all()}


async def user_by_user_id(session: AsyncSession, user_id: str) -> User | None:
    """The user (live or removed) with public id ``user_id``."""
    return (await session.execute(select(User).where(User.user_id == user_id))).scalar_one_or_none()


async def tenant_by_client_id(session: AsyncSession, client_id: str) -> Tenant | None:
    """The tenant with ``client_id``."""
    return (await session.execute(select(Tenant).where(Tenant.client_id == client_id))).scalar_one_or_none()
