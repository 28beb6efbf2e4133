"""Queries on audit events: the hash chain's sealing and verification, and the audit API's reads.

Sealing walks ``ix_audit_events_xact`` past the seal mark; verification reads blocks by chain and events
by id, and the rows sealed one by one before blocks through ``ix_audit_events_chain``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, literal_column, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from broker.db.models import AuditBlock, AuditChain, AuditEvent, AuditSealMark, Grant, GrantParty, Tenant, User

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

_SEALED: Any = literal_column(
    "(audit_events.seq IS NOT NULL OR (audit_events.xact IS NOT NULL AND "
    "(audit_events.xact, audit_events.id) <= (SELECT m.xact, m.event_id FROM audit_seal_mark AS m)))"
).label("sealed")
"""Whether an event is in its chain yet (for the audit API)."""


def _in_chain(tenant_id: uuid.UUID | None) -> Any:  # noqa: ANN401 - a SQL expression
    return AuditEvent.tenant_id.is_(None) if tenant_id is None else AuditEvent.tenant_id == tenant_id


# --- the hash chain ------------------------------------------------------------------------------------


async def lock_mark(session: AsyncSession, *, wait: bool) -> Row[int, int] | None:
    """The seal mark ``(xact, event_id)``, locked (None: another sealer holds it and ``wait`` is false)."""
    result = await session.execute(
        select(AuditSealMark.xact, AuditSealMark.event_id).with_for_update(skip_locked=not wait)
    )
    return result.one_or_none()


_HORIZON = text("SELECT CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text) AS bigint)")


async def horizon(session: AsyncSession) -> int:
    """The oldest transaction still running: every transaction before it has committed or rolled back."""
    return int((await session.execute(_HORIZON)).scalar_one())


def _past(xact: int, event_id: int) -> Any:  # noqa: ANN401 - a SQL condition
    """Events after ``(xact, event_id)`` in sealing order (``ix_audit_events_xact``)."""
    return and_(AuditEvent.xact.is_not(None), tuple_(AuditEvent.xact, AuditEvent.id) > tuple_(xact, event_id))


async def to_seal(session: AsyncSession, mark: tuple[int, int], before_xact: int, limit: int) -> Sequence[Row[Any]]:
    """The next events past ``mark`` written by transactions before ``before_xact``, in (xact, id) order."""
    result = await session.execute(
        select(*_EVENT_COLUMNS, AuditEvent.xact)
        .where(_past(*mark), AuditEvent.xact < before_xact)
        .order_by(AuditEvent.xact, AuditEvent.id)
        .limit(limit)
    )
    return result.all()


async def lock_heads(session: AsyncSession, chain_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """The heads of these chains (created if new), locked, in chain id order."""
    ordered = sorted(set(chain_ids))
    await session.execute(insert(AuditChain).values([{"chain_id": c} for c in ordered]).on_conflict_do_nothing())
    result = await session.execute(
        select(AuditChain.chain_id, AuditChain.seq, AuditChain.hash, AuditChain.blocks, AuditChain.block_hash)
        .where(AuditChain.chain_id.in_(ordered))
        .order_by(AuditChain.chain_id)
        .with_for_update()
    )
    return {row.chain_id: row for row in result.all()}


async def append_block(
    session: AsyncSession, chain_id: uuid.UUID, seq: int, *, event_ids: list[int], digests: bytes, digest: bytes
) -> None:
    """Store one block and make it the chain's head."""
    await session.execute(
        insert(AuditBlock).values(chain_id=chain_id, seq=seq, event_ids=event_ids, digests=digests, hash=digest)
    )
    await session.execute(
        update(AuditChain)
        .where(AuditChain.chain_id == chain_id)
        .values(blocks=seq, block_hash=digest, sealed_at=func.now())
    )


async def move_mark(session: AsyncSession, xact: int, event_id: int) -> None:
    """Everything up to ``(xact, event_id)`` is sealed."""
    await session.execute(update(AuditSealMark).values(xact=xact, event_id=event_id))


async def head(session: AsyncSession, chain_id: uuid.UUID) -> Any:  # noqa: ANN401 - a head row or None
    """One chain's head."""
    result = await session.execute(select(*_HEAD_COLUMNS).where(AuditChain.chain_id == chain_id))
    return result.one_or_none()


async def heads(session: AsyncSession) -> Sequence[Any]:
    """Every chain's head."""
    result = await session.execute(select(*_HEAD_COLUMNS).order_by(AuditChain.chain_id))
    return result.all()


_HEAD_COLUMNS = (AuditChain.chain_id, AuditChain.seq, AuditChain.hash, AuditChain.blocks, AuditChain.block_hash)


async def count_unsealed(session: AsyncSession, tenant_id: uuid.UUID | None, *, scoped: bool) -> int:
    """Events past the seal mark, of one chain (``scoped``) or of all."""
    mark = (await session.execute(select(AuditSealMark.xact, AuditSealMark.event_id))).one()
    query = select(func.count()).select_from(AuditEvent).where(_past(mark.xact, mark.event_id))
    if scoped:
        query = query.where(_in_chain(tenant_id))
    return int((await session.execute(query)).scalar_one())


async def sealed_after(
    session: AsyncSession, tenant_id: uuid.UUID | None, after_seq: int, limit: int
) -> Sequence[Row[Any]]:
    """The chain's events sealed one by one with ``seq > after_seq``, in ``seq`` order."""
    result = await session.execute(
        select(*_EVENT_COLUMNS)
        .where(_in_chain(tenant_id), AuditEvent.seq.is_not(None), AuditEvent.seq > after_seq)
        .order_by(AuditEvent.seq)
        .limit(limit)
    )
    return result.all()


async def blocks_after(session: AsyncSession, chain_id: uuid.UUID, after_seq: int, limit: int) -> Sequence[Any]:
    """The chain's blocks with ``seq > after_seq``, in order."""
    result = await session.execute(
        select(AuditBlock.seq, AuditBlock.event_ids, AuditBlock.digests, AuditBlock.hash)
        .where(AuditBlock.chain_id == chain_id, AuditBlock.seq > after_seq)
        .order_by(AuditBlock.seq)
        .limit(limit)
    )
    return result.all()


async def events_by_id(session: AsyncSession, ids: Sequence[int]) -> dict[int, Row[Any]]:
    """The events with these ids that still exist."""
    result = await session.execute(select(*_EVENT_COLUMNS).where(AuditEvent.id.in_(ids)))
    return {row.id: row for row in result.all()}


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
    query = select(*_EVENT_COLUMNS, _SEALED, Tenant.client_id.label("client_id")).outerjoin(
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
