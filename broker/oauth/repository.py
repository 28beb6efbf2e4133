"""Token and grant queries. Every statement here is indexed; none loads ORM object graphs.

Liveness rule used throughout: a grant is live when it and every grant in its ``path`` (its ancestors)
are unrevoked. The ancestor check is one indexed ``EXISTS`` over primary keys, so revocation never
has to race against a child being created concurrently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Uuid, bindparam, exists, func, insert, literal, select, update
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.orm import aliased

from broker.db.models import AccessToken, Grant, GrantParty, RefreshToken, Tenant, UpstreamGrant, User
from broker.observability import metrics

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence
    from datetime import datetime

    from sqlalchemy import Table
    from sqlalchemy.engine import Row
    from sqlalchemy.ext.asyncio import AsyncSession

_ancestor = aliased(Grant, name="ancestor")


def _ancestor_revoked() -> Any:  # noqa: ANN401 - a SQL expression
    return (
        exists()
        .where(_ancestor.id == func.any(Grant.path), _ancestor.revoked_at.is_not(None))
        .label("ancestor_revoked")
    )


def _gateway() -> Any:  # noqa: ANN401 - a SQL expression
    """Whether the grant was issued through a tenant's upstream (gateway mode): one primary-key probe."""
    return exists().where(UpstreamGrant.id == Grant.id).label("gateway")


def _is_party(caller_id: Any) -> Any:  # noqa: ANN401 - a bound tenant id in, a SQL expression out
    return (
        exists()
        .where(
            GrantParty.grant_id == Grant.id,
            GrantParty.tenant_id == caller_id,
            GrantParty.withdrawn_at.is_(None),
        )
        .label("caller_is_party")
    )


_GRANTS = cast("Table", Grant.__table__)
_INSERT_GRANT = insert(_GRANTS)
_INSERT_PARTY = insert(cast("Table", GrantParty.__table__))
_INSERT_REFRESH = insert(cast("Table", RefreshToken.__table__))
_INSERT_ACCESS = insert(cast("Table", AccessToken.__table__))
"""Core inserts built once: ``insert(Model).values(**row)`` per call cost about 40 µs a column in coercion,
and the ORM's bulk path more; these take their values as parameters."""


async def insert_grant(session: AsyncSession, values: dict[str, Any]) -> None:
    """Insert one grant row."""
    await session.execute(_INSERT_GRANT, values)


async def insert_parties(session: AsyncSession, grant_id: uuid.UUID, parties: Sequence[tuple[uuid.UUID, str]]) -> None:
    """Insert the parties of a multi-party grant: ``(tenant_id, via)`` pairs."""
    await session.execute(
        _INSERT_PARTY, [{"grant_id": grant_id, "tenant_id": tenant_id, "via": via} for tenant_id, via in parties]
    )


async def insert_tokens(session: AsyncSession, refresh: dict[str, Any], access: dict[str, Any]) -> None:
    """Insert a refresh token row and an access token row."""
    await session.execute(_INSERT_REFRESH, refresh)
    await session.execute(_INSERT_ACCESS, access)


async def refresh_for_update(session: AsyncSession, digest: bytes) -> Row[Any] | None:
    """The refresh token with ``digest`` and its grant, the token row locked ``FOR UPDATE``.

    The lock serialises concurrent rotations of one token: the first rotates, the others then see
    ``rotated_at`` set and answer from the retry pair.
    """
    result = await session.execute(
        select(RefreshToken, Grant, _ancestor_revoked(), _gateway())
        .join(Grant, Grant.id == RefreshToken.grant_id)
        .where(RefreshToken.digest == digest)
        .with_for_update(of=RefreshToken)
    )
    return result.one_or_none()


async def refresh_by_digest(session: AsyncSession, digest: bytes) -> Row[Any] | None:
    """The refresh token with ``digest`` and its grant, without locking."""
    result = await session.execute(
        select(RefreshToken, Grant, _ancestor_revoked(), _gateway())
        .join(Grant, Grant.id == RefreshToken.grant_id)
        .where(RefreshToken.digest == digest)
    )
    return result.one_or_none()


async def successor_rotated(session: AsyncSession, successor_id: uuid.UUID) -> bool:
    """Whether the successor of a rotated token has itself been used (rotated or revoked)."""
    result = await session.execute(
        select(RefreshToken.rotated_at.is_not(None) | RefreshToken.revoked_at.is_not(None)).where(
            RefreshToken.id == successor_id
        )
    )
    return bool(result.scalar_one_or_none())


async def mark_rotated(
    session: AsyncSession, token_id: uuid.UUID, successor_id: uuid.UUID, retry_pair_enc: str, now: datetime
) -> None:
    """Record a rotation, keeping the sealed successor pair for the grace window."""
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == token_id)
        .values(rotated_at=now, successor_id=successor_id, retry_pair_enc=retry_pair_enc)
    )


async def forget_retry_pair(session: AsyncSession, token_id: uuid.UUID) -> None:
    """Drop a predecessor's sealed retry pair once it can no longer be used."""
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == token_id, RefreshToken.retry_pair_enc.is_not(None))
        .values(retry_pair_enc=None)
    )


async def active_party(session: AsyncSession, grant_id: uuid.UUID, tenant_id: uuid.UUID) -> bool:
    """Whether ``tenant_id`` is a party of ``grant_id`` that has not withdrawn."""
    result = await session.execute(
        select(literal(value=True)).where(
            GrantParty.grant_id == grant_id, GrantParty.tenant_id == tenant_id, GrantParty.withdrawn_at.is_(None)
        )
    )
    return result.scalar_one_or_none() is not None


async def revoke_subtree(session: AsyncSession, grant_id: uuid.UUID, reason: str, now: datetime) -> list[uuid.UUID]:
    """Revoke a grant and every descendant in one statement; return the ids newly revoked.

    Descendants are found through the GIN-indexed ``path`` array. A descendant created concurrently
    and missed by this statement is still dead, because liveness checks every ancestor.
    """
    result = await session.execute(_REVOKE_SUBTREE, {"grant_id": grant_id, "reason": reason, "now": now})
    revoked = list(result.scalars())
    metrics.REVOCATIONS.inc(reason)
    metrics.CASCADE_SIZE.observe(len(revoked), reason)
    return revoked


_REVOKE_SUBTREE = (
    update(_GRANTS)
    .where(
        (_GRANTS.c.id == bindparam("grant_id", type_=Uuid()))
        | _GRANTS.c.path.contains(array([bindparam("grant_id", type_=Uuid())])),
        _GRANTS.c.revoked_at.is_(None),
    )
    .values(revoked_at=bindparam("now"), revoked_reason=bindparam("reason"))
    .returning(_GRANTS.c.id)
)


async def party_grants(session: AsyncSession, shared_grant_id: uuid.UUID, tenant_id: uuid.UUID) -> list[uuid.UUID]:
    """The live party lineages a tenant forked from a shared grant."""
    result = await session.execute(
        select(Grant.id).where(
            Grant.parent_id == shared_grant_id,
            Grant.kind == "party",
            Grant.holder_tenant_id == tenant_id,
            Grant.revoked_at.is_(None),
        )
    )
    return list(result.scalars())


async def withdraw_party(session: AsyncSession, grant_id: uuid.UUID, tenant_id: uuid.UUID, now: datetime) -> bool:
    """Mark a party as withdrawn from a shared grant; False when it was not an active party."""
    result = await session.execute(
        update(GrantParty)
        .where(GrantParty.grant_id == grant_id, GrantParty.tenant_id == tenant_id, GrantParty.withdrawn_at.is_(None))
        .values(withdrawn_at=now)
        .returning(GrantParty.tenant_id)
    )
    return result.scalar_one_or_none() is not None


async def revoke_access(session: AsyncSession, digest: bytes, now: datetime) -> None:
    """Revoke one access token."""
    await session.execute(
        update(AccessToken).where(AccessToken.digest == digest, AccessToken.revoked_at.is_(None)).values(revoked_at=now)
    )
    metrics.REVOCATIONS.inc("access_token.revoked")


_requester = aliased(Tenant, name="requester")
_holder = aliased(Tenant, name="holder")


def _describe(token_table: Any, token_columns: Sequence[Any]) -> Any:  # noqa: ANN401
    """The describe statement of one token table, built once: ``digest`` and ``caller_id`` are bound."""
    return (
        select(
            *token_columns,
            Grant,
            _ancestor_revoked(),
            _is_party(bindparam("caller_id", type_=Uuid())),
            _requester.client_id.label("requester_client_id"),
            _holder.client_id.label("holder_client_id"),
            User.user_id.label("user_id"),
        )
        .select_from(token_table)
        .join(Grant, Grant.id == token_table.grant_id)
        .join(_requester, _requester.id == Grant.requester_tenant_id)
        .outerjoin(_holder, _holder.id == Grant.holder_tenant_id)
        .outerjoin(User, User.id == Grant.user_pk)
        .where(token_table.digest == bindparam("digest"))
    )


_DESCRIBE_ACCESS = _describe(
    AccessToken,
    [
        AccessToken.expires_at,
        AccessToken.revoked_at.label("token_revoked_at"),
        AccessToken.scopes.label("token_scopes"),
        AccessToken.created_at.label("issued_at"),
    ],
)
_DESCRIBE_REFRESH = _describe(
    RefreshToken,
    [
        RefreshToken.expires_at,
        RefreshToken.revoked_at.label("token_revoked_at"),
        RefreshToken.rotated_at,
        RefreshToken.created_at.label("issued_at"),
    ],
)


async def describe_access(session: AsyncSession, digest: bytes, caller_id: uuid.UUID) -> Row[Any] | None:
    """An access token with everything introspection needs, in one query."""
    return (await session.execute(_DESCRIBE_ACCESS, {"digest": digest, "caller_id": caller_id})).one_or_none()


async def describe_refresh(session: AsyncSession, digest: bytes, caller_id: uuid.UUID) -> Row[Any] | None:
    """A refresh token with everything introspection needs, in one query."""
    return (await session.execute(_DESCRIBE_REFRESH, {"digest": digest, "caller_id": caller_id})).one_or_none()
