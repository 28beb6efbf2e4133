"""Audit events, written inside the caller's transaction so they commit (or roll back) with the change.

Invariant: no token, secret or key is ever passed here; ``detail`` holds ids, counts and names only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import bindparam, insert
from sqlalchemy.dialects.postgresql import JSONB

from broker.db.models import AuditEvent

if TYPE_CHECKING:
    import uuid

    from sqlalchemy import Table
    from sqlalchemy.ext.asyncio import AsyncSession


async def record(
    session: AsyncSession,
    *,
    action: str,
    actor: str,
    tenant_id: uuid.UUID | None,
    request_id: str | None,
    outcome: str = "success",
    grant_id: uuid.UUID | None = None,
    user_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Insert one audit event in the current transaction."""
    await session.execute(
        _RECORD,
        {
            "tenant_id": tenant_id,
            "request_id": request_id,
            "actor": actor,
            "action": action,
            "outcome": outcome,
            "grant_id": grant_id,
            "user_id": user_id,
            "detail": detail or {},
        },
    )


_RECORD = insert(cast("Table", AuditEvent.__table__)).values(
    {
        name: bindparam(name, type_=JSONB if name == "detail" else None)
        for name in ("tenant_id", "request_id", "actor", "action", "outcome", "grant_id", "user_id", "detail")
    }
)
"""Built once: building ``insert(...).values(...)`` per event cost more CPU than sending it."""


async def record_many(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert several audit events in one statement (each dict has :func:`record`'s keyword names)."""
    if not rows:
        return
    defaults: dict[str, Any] = {
        "outcome": "success",
        "grant_id": None,
        "user_id": None,
        "detail": {},
        "request_id": None,
    }
    await session.execute(insert(AuditEvent), [{**defaults, **row} for row in rows])
