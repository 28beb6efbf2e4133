"""Integrity queries over grants, parties and tokens: each returns the ids of the rows that break a rule.

Read-only; each is one statement that a foreign key or a transaction should have made impossible, so
a non-empty answer means corruption (a half-written change, a bug, or a hand edit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import text

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence

    from sqlalchemy.engine import Row
    from sqlalchemy.ext.asyncio import AsyncSession

RULES: dict[str, str] = {
    "grant_parent_missing": """
        SELECT g.id FROM grants g
        WHERE g.parent_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM grants p WHERE p.id = g.parent_id)""",
    "grant_path_broken": """
        SELECT g.id FROM grants g
        WHERE (g.parent_id IS NULL) <> (cardinality(g.path) = 0)
           OR (g.parent_id IS NOT NULL AND g.path[cardinality(g.path)] IS DISTINCT FROM g.parent_id)
           OR EXISTS (SELECT 1 FROM unnest(g.path) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM grants p WHERE p.id = a.id))
           OR (g.parent_id IS NOT NULL AND EXISTS (
                SELECT 1 FROM grants p WHERE p.id = g.parent_id
                AND (p.path IS DISTINCT FROM g.path[1:cardinality(g.path) - 1] OR p.tenant_id <> g.tenant_id)))""",
    "grant_without_tokens": """
        SELECT g.id FROM grants g
        WHERE NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.grant_id = g.id)
           OR NOT EXISTS (SELECT 1 FROM access_tokens a WHERE a.grant_id = g.id)""",
    "multi_party_grant_without_parties": """
        SELECT g.id FROM grants g
        WHERE g.kind = 'multi_party' AND NOT EXISTS (SELECT 1 FROM grant_parties gp WHERE gp.grant_id = g.id)""",
    "party_of_non_multi_party_grant": """
        SELECT gp.grant_id FROM grant_parties gp
        LEFT JOIN grants g ON g.id = gp.grant_id
        WHERE g.id IS NULL OR g.kind <> 'multi_party'""",
    "refresh_token_grant_missing": """
        SELECT r.id FROM refresh_tokens r LEFT JOIN grants g ON g.id = r.grant_id
        WHERE g.id IS NULL OR g.tenant_id <> r.tenant_id""",
    "access_token_grant_missing": """
        SELECT a.grant_id FROM access_tokens a LEFT JOIN grants g ON g.id = a.grant_id
        WHERE g.id IS NULL OR g.tenant_id <> a.tenant_id""",
    "refresh_token_rotated_without_successor": """
        SELECT r.id FROM refresh_tokens r
        WHERE r.rotated_at IS NOT NULL AND (r.successor_id IS NULL OR NOT EXISTS (
            SELECT 1 FROM refresh_tokens s
            WHERE s.id = r.successor_id AND s.parent_id = r.id AND s.grant_id = r.grant_id))""",
    "refresh_token_with_several_successors": """
        SELECT r.parent_id FROM refresh_tokens r
        WHERE r.parent_id IS NOT NULL GROUP BY r.parent_id HAVING count(*) > 1""",
    "multi_party_token_rotated": """
        SELECT r.id FROM refresh_tokens r JOIN grants g ON g.id = r.grant_id
        WHERE g.kind = 'multi_party' AND r.rotated_at IS NOT NULL""",
}
"""Each rule's statement; its first column names the offending row."""


async def offenders(session: AsyncSession, rule: str, limit: int) -> tuple[int, list[str]]:
    """How many rows break ``rule``, and the ids of the first ``limit`` of them."""
    statement = f"SELECT count(*) OVER (), id::text FROM ({RULES[rule]}) AS bad(id) LIMIT :limit"  # noqa: S608
    rows = (await session.execute(text(statement), {"limit": limit})).all()
    return (int(rows[0][0]) if rows else 0), [str(row[1]) for row in rows]


async def sealed_batch(
    session: AsyncSession,
    table: str,
    columns: Sequence[str],
    after: uuid.UUID | None,
    size: int,
) -> Sequence[Row[Any]]:
    """One keyset page of ``(id, tenant_id, *columns)`` of a sealed table (names come from the registry)."""
    selected = ", ".join(columns)
    where = "WHERE id > :after" if after is not None else ""
    statement = text(f"SELECT id, tenant_id, {selected} FROM {table} {where} ORDER BY id LIMIT :size")  # noqa: S608
    return (await session.execute(statement, {"after": after, "size": size})).all()


async def shredded_key_ids(session: AsyncSession) -> set[str]:
    """The ids of shredded tenant data keys (their envelopes are gone on purpose)."""
    rows = await session.execute(text("SELECT id::text FROM tenant_keys WHERE shredded_at IS NOT NULL"))
    return {str(row[0]) for row in rows}
