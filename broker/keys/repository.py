"""Queries on tenant data keys and on the sealed columns (status counts, re-encryption batches).

Key ids are compared with ``split_part(column, '.', 2) = :kid`` rather than ``LIKE``: key ids may hold
``_``, a ``LIKE`` wildcard. The only ``LIKE`` patterns are the literal ``'v1.%'`` predicates of the
partial indexes, written as SQL text so the planner can match them to the indexes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import insert

from broker.db.models import Grant, RefreshToken, Tenant, TenantKey, User

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence
    from datetime import datetime

    from sqlalchemy.engine import Row
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.keys.columns import SealedTable

_MINE: Any = literal_column("xmin = pg_current_xact_id_if_assigned()::xid").label("mine")
"""True when the row was written by the current, uncommitted transaction (never cache those)."""


async def live_key_of_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> Row[Any] | None:
    """The tenant's live data key: ``(id, wrapped, mine)``."""
    result = await session.execute(
        select(TenantKey.id, TenantKey.wrapped, _MINE).where(
            TenantKey.tenant_id == tenant_id, TenantKey.shredded_at.is_(None)
        )
    )
    return result.one_or_none()


async def live_key_by_id(session: AsyncSession, dek_id: uuid.UUID) -> Row[Any] | None:
    """A live (unshredded) data key by id: ``(id, tenant_id, wrapped, mine)``."""
    result = await session.execute(
        select(TenantKey.id, TenantKey.tenant_id, TenantKey.wrapped, _MINE).where(
            TenantKey.id == dek_id, TenantKey.shredded_at.is_(None)
        )
    )
    return result.one_or_none()


async def insert_key(session: AsyncSession, dek_id: uuid.UUID, tenant_id: uuid.UUID, wrapped: str) -> None:
    """Insert a tenant's live data key unless it already has one (a concurrent insert waits, then yields)."""
    await session.execute(
        insert(TenantKey)
        .values(id=dek_id, tenant_id=tenant_id, wrapped=wrapped)
        .on_conflict_do_nothing(index_elements=[TenantKey.tenant_id], index_where=TenantKey.shredded_at.is_(None))
    )


async def shred_keys(session: AsyncSession, tenant_id: uuid.UUID, now: datetime) -> list[uuid.UUID]:
    """Destroy the tenant's live data keys (tombstones stay); return their ids."""
    result = await session.execute(
        update(TenantKey)
        .where(TenantKey.tenant_id == tenant_id, TenantKey.shredded_at.is_(None))
        .values(wrapped=None, shredded_at=now)
        .returning(TenantKey.id)
    )
    return list(result.scalars())


async def lock_tenant(session: AsyncSession, client_id: str) -> Tenant | None:
    """The tenant with ``client_id``, locked ``FOR UPDATE`` (waits for in-flight inserts of its rows)."""
    result = await session.execute(select(Tenant).where(Tenant.client_id == client_id).with_for_update())
    return result.scalar_one_or_none()


async def revoke_tenant_grants(
    session: AsyncSession, tenant_id: uuid.UUID, now: datetime
) -> tuple[int, list[uuid.UUID]]:
    """Revoke every live grant the tenant owns (its own, and every lineage shared from its data).

    Returns:
        How many were revoked, and the ids of those shared with other clients (exchanges, multi-party
        grants and party lineages), whose holders should hear of it.
    """
    result = await session.execute(
        update(Grant)
        .where(Grant.tenant_id == tenant_id, Grant.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason="tenant.shredded")
        .returning(Grant.id, Grant.kind)
    )
    rows = result.all()
    return len(rows), [grant_id for grant_id, kind in rows if kind in {"exchange", "multi_party", "party"}]


async def tombstone_tenant_users(session: AsyncSession, tenant_id: uuid.UUID, now: datetime) -> int:
    """Mark every live user of the tenant removed, dropping identity data."""
    result = await session.execute(
        update(User)
        .where(User.tenant_id == tenant_id, User.removed_at.is_(None))
        .values(removed_at=now, identity_enc=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def overwrite_tenant_v1_values(session: AsyncSession, tenant_id: uuid.UUID, placeholder: str) -> int:
    """Drop the tenant's retry pairs and overwrite its ``v1`` values with ``placeholder``.

    ``v1`` values are sealed under a ring key, so destroying the data key would not reach them.
    Returns the number of rows changed.
    """
    changed = 0
    for statement in (
        update(RefreshToken)
        .where(RefreshToken.tenant_id == tenant_id, RefreshToken.retry_pair_enc.is_not(None))
        .values(retry_pair_enc=None),
        update(RefreshToken)
        .where(RefreshToken.tenant_id == tenant_id, RefreshToken.token_enc.startswith("v1.", autoescape=True))
        .values(token_enc=placeholder),
        update(User)
        .where(
            User.tenant_id == tenant_id,
            User.user_token_enc.startswith("v1.", autoescape=True)
            | User.identity_enc.startswith("v1.", autoescape=True),
        )
        .values(user_token_enc=placeholder, identity_enc=None),
    ):
        changed += int((await session.execute(statement)).rowcount)  # type: ignore[attr-defined]
    return changed


# --- key usage -----------------------------------------------------------------------------------------


async def data_keys_by_ring_key(session: AsyncSession) -> dict[str, int]:
    """How many data keys each ring key wraps; shredded ones under ``"shredded"``."""
    kid = func.coalesce(func.split_part(TenantKey.wrapped, ".", 2), "shredded")
    result = await session.execute(select(kid, func.count()).group_by(kid))
    return {str(k): int(n) for k, n in result.all()}


async def column_usage(session: AsyncSession, table: str, column: str) -> list[tuple[str, str, int]]:
    """``(version, key, rows)`` for one sealed column.

    ``key`` is the ring key id for ``v1`` rows, and for ``v2`` rows the ring key wrapping their data key
    (``shredded`` when it was shredded, ``unknown`` when no such data key exists).
    """
    statement = text(
        f"""
        SELECT split_part(t.{column}, '.', 1) AS version,
               CASE WHEN split_part(t.{column}, '.', 1) <> 'v2' THEN split_part(t.{column}, '.', 2)
                    WHEN k.id IS NULL THEN 'unknown'
                    WHEN k.wrapped IS NULL THEN 'shredded'
                    ELSE split_part(k.wrapped, '.', 2) END AS key,
               count(*) AS n
        FROM {table} AS t
        LEFT JOIN tenant_keys AS k
               ON split_part(t.{column}, '.', 1) = 'v2' AND k.id::text = split_part(t.{column}, '.', 2)
        WHERE t.{column} IS NOT NULL
        GROUP BY 1, 2
        """  # noqa: S608 - table and column come from the fixed registry in broker.keys.columns
    )
    result = await session.execute(statement)
    return [(str(v), str(k), int(n)) for v, k, n in result.all()]


async def v1_key_ids(session: AsyncSession, table: SealedTable) -> set[str]:
    """The ring key ids named by ``v1`` rows of a tenant-data table (through its partial index)."""
    found: set[str] = set()
    for column in table.columns:
        statement = text(
            f"SELECT DISTINCT split_part({column.column}, '.', 2) FROM {table.name} "  # noqa: S608 - fixed registry
            f"WHERE ({table.v1_predicate}) AND {column.column} LIKE 'v1.%'"
        )
        found |= {str(kid) for kid in (await session.execute(statement)).scalars()}
    return found


async def wrapped_key_ids(session: AsyncSession) -> set[str]:
    """The ring key ids wrapping live data keys."""
    kid = func.split_part(TenantKey.wrapped, ".", 2)
    result = await session.execute(select(kid).where(TenantKey.wrapped.is_not(None)).distinct())
    return {str(k) for k in result.scalars()}


async def count_keys_wrapped_by(session: AsyncSession, kid: str) -> int:
    """Live data keys wrapped by ring key ``kid``."""
    result = await session.execute(
        select(func.count()).where(TenantKey.wrapped.is_not(None), func.split_part(TenantKey.wrapped, ".", 2) == kid)
    )
    return int(result.scalar_one())


async def count_v1_rows_under(session: AsyncSession, table: SealedTable, kid: str) -> int:
    """Rows of a tenant-data table with a ``v1`` value sealed under ring key ``kid``."""
    named = " OR ".join(f"({c.column} LIKE 'v1.%' AND split_part({c.column}, '.', 2) = :kid)" for c in table.columns)
    statement = text(
        f"SELECT count(*) FROM {table.name} WHERE ({table.v1_predicate}) AND ({named})"  # noqa: S608 - fixed registry
    )
    return int((await session.execute(statement, {"kid": kid})).scalar_one())


# --- re-encryption batches ---------------------------------------------------------------------------


async def claim_keys_to_rewrap(
    session: AsyncSession, active: str, after: uuid.UUID | None, limit: int
) -> list[Row[Any]]:
    """Live data keys not wrapped by ``active``, locked ``FOR UPDATE SKIP LOCKED`` in id order."""
    query = (
        select(TenantKey.id, TenantKey.tenant_id, TenantKey.wrapped)
        .where(TenantKey.wrapped.is_not(None), func.split_part(TenantKey.wrapped, ".", 2) != active)
        .order_by(TenantKey.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if after is not None:
        query = query.where(TenantKey.id > after)
    rows: list[Row[Any]] = list((await session.execute(query)).all())  # type: ignore[arg-type]
    return rows


async def count_keys_to_rewrap(session: AsyncSession, active: str) -> int:
    """Live data keys not yet wrapped by ``active`` (locked or not)."""
    result = await session.execute(
        select(func.count()).where(TenantKey.wrapped.is_not(None), func.split_part(TenantKey.wrapped, ".", 2) != active)
    )
    return int(result.scalar_one())


async def set_wrapped(session: AsyncSession, rewrapped: Sequence[tuple[uuid.UUID, str]]) -> None:
    """Store rewrapped data keys."""
    if not rewrapped:
        return
    statement = (
        update(TenantKey.__table__)  # type: ignore[arg-type]
        .where(TenantKey.__table__.c.id == bindparam("key_id"))
        .values(wrapped=bindparam("new_wrapped"))
    )
    await session.execute(statement, [{"key_id": k, "new_wrapped": w} for k, w in rewrapped])


async def claim_v1_rows(
    session: AsyncSession, table: SealedTable, after: uuid.UUID | None, limit: int
) -> list[Row[Any]]:
    """Rows of a tenant-data table still holding ``v1`` values, locked ``FOR UPDATE SKIP LOCKED`` in id order."""
    columns = ", ".join(c.column for c in table.columns)
    cursor = "AND id > :after" if after is not None else ""
    statement = text(
        f"SELECT id, tenant_id, {columns} FROM {table.name} "  # noqa: S608 - fixed registry
        f"WHERE ({table.v1_predicate}) {cursor} ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
    )
    params: dict[str, Any] = {"limit": limit}
    if after is not None:
        params["after"] = after
    return list((await session.execute(statement, params)).all())


async def count_v1_rows(session: AsyncSession, table: SealedTable) -> int:
    """Rows of a tenant-data table still holding ``v1`` values (locked or not)."""
    statement = text(f"SELECT count(*) FROM {table.name} WHERE ({table.v1_predicate})")  # noqa: S608 - fixed registry
    return int((await session.execute(statement)).scalar_one())


async def store_rows(
    session: AsyncSession, table: SealedTable, column: str, values: Sequence[tuple[uuid.UUID, str]]
) -> None:
    """Write re-encrypted values of one column: one statement per batch (``UPDATE ... FROM unnest``)."""
    if not values:
        return
    statement = text(
        f"UPDATE {table.name} AS t SET {column} = v.value "  # noqa: S608 - fixed registry
        "FROM unnest(CAST(:row_ids AS uuid[]), CAST(:sealed AS text[])) AS v(id, value) WHERE t.id = v.id"
    )
    await session.execute(statement, {"row_ids": [r for r, _ in values], "sealed": [v for _, v in values]})
