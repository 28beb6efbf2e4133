"""Queries on users, and the grant revocation that removing a user implies.

Every query is scoped by ``tenant_id``: a tenant never reads or changes another tenant's users. "Live"
means ``removed_at IS NULL``; a removed user is a tombstone that no query here returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert

from broker.db.models import Grant, User
from broker.observability import metrics

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncSession

USER_REMOVED = "user.removed"


async def insert_if_absent(session: AsyncSession, values: dict[str, Any]) -> uuid.UUID | None:
    """Insert a user unless the tenant already has a live one with that ``client_user_id``.

    Relies on the partial unique index ``uq_users_tenant_id_client_user_id_live``: a concurrent insert
    of the same ``client_user_id`` waits for the other transaction, then does nothing.

    Returns:
        The new row's id, or None when a live user with that ``client_user_id`` exists.
    """
    statement = (
        insert(User)
        .values(**values)
        .on_conflict_do_nothing(
            index_elements=[User.tenant_id, User.client_user_id],
            index_where=User.removed_at.is_(None),
        )
        .returning(User.id)
    )
    result = await session.execute(statement)
    return result.scalar_one_or_none()


async def live_by_client_user_id(session: AsyncSession, tenant_id: uuid.UUID, client_user_id: str) -> User | None:
    """The tenant's live user with ``client_user_id``."""
    result = await session.execute(
        select(User).where(
            User.tenant_id == tenant_id,
            User.client_user_id == client_user_id,
            User.removed_at.is_(None),
        )
    )
    return result.scalar_one_or_none()


async def find_live(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    *,
    user_id: str | None = None,
    token_digest: bytes | None = None,
    match_either: bool = False,
    lock: str | None = None,
) -> User | None:
    """The tenant's live user with this ``user_id`` and/or user-token digest, in one indexed query.

    Args:
        session: The session (inside the caller's transaction when ``lock`` is set).
        tenant_id: The tenant the user must belong to.
        user_id: Match on the public ``usr_...`` id.
        token_digest: Match on the keyed digest of the user token.
        match_either: With both given, match a user that has either (OR) instead of both (AND).
        lock: ``"update"`` for ``FOR UPDATE``, ``"share"`` for ``FOR SHARE``, None for no lock.
    """
    conditions = []
    if user_id is not None:
        conditions.append(User.user_id == user_id)
    if token_digest is not None:
        conditions.append(User.user_token_digest == token_digest)
    if not conditions:
        return None
    query = select(User).where(User.tenant_id == tenant_id, User.removed_at.is_(None))
    query = query.where(or_(*conditions)) if match_either else query.where(*conditions)
    if lock == "update":
        query = query.with_for_update()
    elif lock == "share":
        query = query.with_for_update(read=True)
    result = await session.execute(query)
    return result.scalars().first()


async def set_identity(session: AsyncSession, user_pk: uuid.UUID, identity_enc: str) -> None:
    """Replace a user's sealed identity and stamp ``updated_at``."""
    await session.execute(
        update(User).where(User.id == user_pk).values(identity_enc=identity_enc, updated_at=func.now())
    )


async def mark_removed(session: AsyncSession, tenant_id: uuid.UUID, user_pk: uuid.UUID) -> bool:
    """Tombstone a live user (``removed_at`` set, identity dropped). False if it was not live."""
    result = await session.execute(
        update(User)
        .where(User.id == user_pk, User.tenant_id == tenant_id, User.removed_at.is_(None))
        .values(removed_at=func.now(), identity_enc=None)
        .returning(User.id)
    )
    return result.scalar_one_or_none() is not None


async def revoke_user_grants(session: AsyncSession, tenant_id: uuid.UUID, user_pk: uuid.UUID) -> list[uuid.UUID]:
    """Revoke every unrevoked grant whose subject is the user; return their ids.

    Derived grants (refresh, exchange, multi-party parties) inherit ``user_pk`` and the owning
    ``tenant_id``, and liveness is also checked through each grant's ancestor path, so this one
    statement kills every token that speaks for the user.
    """
    result = await session.execute(
        update(Grant)
        .where(Grant.tenant_id == tenant_id, Grant.user_pk == user_pk, Grant.revoked_at.is_(None))
        .values(revoked_at=func.now(), revoked_reason=USER_REMOVED)
        .returning(Grant.id)
    )
    revoked = list(result.scalars())
    metrics.REVOCATIONS.inc(USER_REMOVED)
    metrics.CASCADE_SIZE.observe(len(revoked), USER_REMOVED)
    return revoked
