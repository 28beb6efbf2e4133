"""Database readiness: reachable, and migrated to the newest revision."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import text

from broker.db import migrate

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


async def reachable(engine: AsyncEngine) -> str:
    """``"ok"`` when the server of ``engine`` answers, else why not."""
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        return f"unavailable ({type(exc).__name__})"
    return "ok"


async def check(engine: AsyncEngine) -> dict[str, str]:
    """``{"database": ..., "migrations": ...}`` with ``"ok"`` for each check that passes."""
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            current = await migrate.current_revision(connection)
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure as not ready
        return {"database": f"unavailable ({type(exc).__name__})", "migrations": "unknown"}
    head = migrate.head_revision()
    return {"database": "ok", "migrations": "ok" if current == head else f"at {current}, head is {head}"}
