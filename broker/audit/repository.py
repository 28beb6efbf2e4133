"""Queries on audit events: the hash chain's sealing and verification, and the audit API's reads.

Chain queries follow the partial indexes: ``ix_audit_events_unsealed`` (``seq IS NULL``) for sealing,
``ix_audit_events_chain`` (``seq IS NOT NULL``) for verification.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert

from broker.db.models import AuditChain, AuditEvent, Grant, GrantParty, Tenant, User

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence
    from datetime import datetime

    from sqlalchemy.engine import Row
    from sqlalchemy.ext.asyncio import AsyncSession

_EVENT_COLUMNS = (
    AuditEvent.id,
    AuditEvent.tenant_id,
    AuditEvent.occurred_at,
    AuditEvent.request_id,
    AuditEvent.actor,
    AuditEvent.action,
    AuditEvent.outcome,
    AuditEvent.grant_id,
    AuditEvent.user_id,
    AuditEvent.detail,
    AuditEvent.seq,
    AuditEvent.hash,
)


def _in_chain(tenant_id: uuid.UUID | None) -> Any:  # noqa: ANN401 - a SQL expression
    return AuditEvent.tenant_id.is_(None) if tenant_id is None else AuditEvent.tenant_id == tenant_id


# --- the hash chain ------------------------------------------------------------------------------------


async def chains_with_unsealed(session: AsyncSession, limit: int) -> list[uuid.UUID | None]:
    """Tenants (None: the global chain) that have unsealed events."""
    result = await session.execute(select(AuditEvent.tenant_id).where(AuditEvent.seq.is_(None)).distinct().limit(limit))
    return list(result.scalars())


async def lock_head(session: AsyncSession, chain_id: uuid.UUID, *, wait: bool = False) -> Row[int, bytes | None] | None:
    """The chain's head, created if new, locked ``FOR UPDATE SKIP LOCKED`` (None: another sealer has it).

    With ``wait``, a plain ``FOR UPDATE``: wait for the other sealer to commit instead of skipping.
    """
    await session.execute(insert(AuditChain).values(chain_id=chain_id).on_conflict_do_nothing())
    result = await session.execute(
        select(AuditChain.seq, AuditChain.hash)
        .where(AuditChain.chain_id == chain_id)
        .with_for_update(skip_locked=not wait)
    )
    return result.one_or_none()


async def unsealed(session: AsyncSession, tenant_id: uuid.UUID | None, limit: int) -> Sequence[Row[Any]]:
    """The chain's next unsealed events, in id order."""
    result = await session.execute(
        select(*_EVENT_COLUMNS)
        .where(_in_chain(tenant_id), AuditEvent.seq.is_(None))
        .order_by(AuditEvent.id)
        .limit(limit)
    )
    return result.all()


_STORE_LINKS = text(
    "UPDATE audit_events AS e SET seq = v.seq, hash = v.hash "
    "FROM unnest(CAST(:ids AS bigint[]), CAST(:seqs AS bigint[]), CAST(:hashes AS bytea[])) AS v(id, seq, hash) "
    "WHERE e.id = v.id"
)


async def store_links(session: AsyncSession, links: Sequence[tuple[int, int, bytes]]) -> None:
    """Write ``(event id, seq, hash)`` for sealed events, in one statement whatever their number."""
    ids, seqs, hashes = (list(column) for column in zip(*links, strict=True)) if links else ([], [], [])
    await session.execute(_STORE_LINKS, {"ids": ids, "seqs": seqs, "hashes": hashes})


async def move_head(session: AsyncSession, chain_id: uuid.UUID, seq: int, digest: bytes) -> None:
    """Record the chain's new last ``seq`` and hash."""
    await session.execute(
        update(AuditChain).where(AuditChain.chain_id == chain_id).values(seq=seq, hash=digest, sealed_at=func.now())
    )


async def head(session: AsyncSession, chain_id: uuid.UUID) -> Row[uuid.UUID, int, bytes | None] | None:
    """One chain's head."""
    result = await session.execute(
        select(AuditChain.chain_id, AuditChain.seq, AuditChain.hash).where(AuditChain.chain_id == chain_id)
    )
    return result.one_or_none()


async def heads(session: AsyncSession) -> Sequence[Row[uuid.UUID, int, bytes | None]]:
    """Every chain's head."""
    result = await session.execute(
        select(AuditChain.chain_id, AuditChain.seq, AuditChain.hash).order_by(AuditChain.chain_id)
    )
    return result.all()


async def count_unsealed(session: AsyncSession, tenant_id: uuid.UUID | None, *, scoped: bool) -> int:
    """Unsealed events of one chain (``scoped``) or of all."""
    query = select(func.count()).select_from(AuditEvent).where(AuditEvent.seq.is_(None))
    if scoped:
        query = query.where(_in_chain(tenant_id))
    return int((await session.execute(query)).scalar_one())


async def sealed_after(
    session: AsyncSession, tenant_id: uuid.UUID | None, after_seq: int, limit: int
) -> Sequence[Row[Any]]:
    """The chain's sealed events with ``seq > after_seq``, in ``seq`` order."""
    result = await session.execute(
        select(*_EVENT_COLUMNS)
        .where(_in_chain(tenant_id), AuditEvent.seq.is_not(None), AuditEvent.seq > after_seq)
        .order_by(AuditEvent.seq)
        .limit(limit)
    )
    return result.all()


# --- the audit API ----------------------------------------------------------------------------------


async def tenant_ids(session: AsyncSession, client_ids: Sequence[str]) -> dict[str, uuid.UUID]:
    """Tenant ids by client id, for those that exist."""
    if not client_ids:
        return {}
    result = await session.execute(select(Tenant.client_id, Tenant.id).where(Tenant.client_id.in_(client_ids)))
    return {str(c): i for c, i in result.all()}


async def client_ids(session: AsyncSession, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str]]:
    """``(client_id, name)`` by tenant id."""
    if not ids:
        return {}
    result = await session.execute(select(Tenant.id, Tenant.client_id, Tenant.name).where(Tenant.id.in_(set(ids))))
    return {i: (c, n) for i, c, n in result.all()}


async def user_by_user_id(session: AsyncSession, user_id: str) -> User | None:
    """The user (live or removed) with public id ``user_id``."""
    result = await session.execute(select(User).where(User.user_id == user_id))
    return result.scalar_one_or_none()


def user_grants_query(user: User) -> Any:  # noqa: ANN401 - a SQL select
    """The ids of every grant whose subject is ``user`` (every derived grant inherits its user)."""
    return select(Grant.id).where(Grant.tenant_id == user.tenant_id, Grant.user_pk == user.id)


def party_grants_query(tenant_id: uuid.UUID) -> Any:  # noqa: ANN401
    """Grants a tenant holds or is a party of."""
    held = select(Grant.id).where(Grant.holder_tenant_id == tenant_id)
    shared = select(GrantParty.grant_id).where(GrantParty.tenant_id == tenant_id)
    return held.union(shared)


async def events_page(
    session: AsyncSession,
    *,
    conditions: Sequence[Any],
    after: int | None,
    descending: bool,
    limit: int,
) -> Sequence[Row[Any]]:
    """Events matching every condition, keyset-paginated on id, with their tenant's client id."""
    query = select(*_EVENT_COLUMNS, Tenant.client_id.label("client_id")).outerjoin(
        Tenant, Tenant.id == AuditEvent.tenant_id
    )
    query = query.where(*conditions)
    if after is not None:
        query = query.where(AuditEvent.id < after if descending else AuditEvent.id > after)
    query = query.order_by(AuditEvent.id.desc() if descending else AuditEvent.id).limit(limit)
    return (await session.execute(query)).all()


def about_user(user: User) -> Any:  # noqa: ANN401
    """Events that name the user, or concern one of its grants."""
    return or_(AuditEvent.user_id == user.user_id, AuditEvent.grant_id.in_(user_grants_query(user)))


def about_party(tenant_id: uuid.UUID, client_id: str) -> Any:  # noqa: ANN401
    """Events a client performed, or that concern a grant it holds or shares."""
    return or_(AuditEvent.actor == client_id, AuditEvent.grant_id.in_(party_grants_query(tenant_id)))


async def activity(
    session: AsyncSession,
    condition: Any,  # noqa: ANN401 - a SQL condition
) -> Sequence[Row[str, str, str, int, datetime, datetime]]:
    """``(actor, action, outcome, count, first, last)`` over the events matching ``condition``."""
    result = await session.execute(
        select(
            AuditEvent.actor,
            AuditEvent.action,
            AuditEvent.outcome,
            func.count(),
            func.min(AuditEvent.occurred_at),
            func.max(AuditEvent.occurred_at),
        )
        .where(condition)
        .group_by(AuditEvent.actor, AuditEvent.action, AuditEvent.outcome)
    )
    return result.all()


def occurred_between(since: datetime | None, until: datetime | None) -> list[Any]:
    """Time-range conditions."""
    conditions = []
    if since is not None:
        conditions.append(AuditEvent.occurred_at >= since)
    if until is not None:
        conditions.append(AuditEvent.occurred_at < until)
    return conditions
