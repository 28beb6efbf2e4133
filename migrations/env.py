"""Alembic environment: async, one transaction per migration, under an advisory lock.

Several replicas may run ``broker migrate`` at once: the first takes the advisory lock and migrates,
the others wait for it and then find nothing to do. ``lock_timeout`` keeps a migration from queueing
behind long transactions forever; ``statement_timeout`` bounds any single DDL statement.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from alembic import context
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from broker.db import models  # noqa: F401 - registers every table on Base.metadata
from broker.db.base import Base
from broker.settings import to_asyncpg_url

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

MIGRATION_LOCK_KEY = 0x62726F6B6572  # "broker"

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    connection.execute(text("SET lock_timeout = '10s'"))
    connection.execute(text("SET statement_timeout = '300s'"))
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    connection.commit()
    try:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            transaction_per_migration=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()


async def _run_async() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        msg = "no database URL given to alembic (set sqlalchemy.url or use `broker migrate`)"
        raise RuntimeError(msg)
    engine = create_async_engine(to_asyncpg_url(url))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
