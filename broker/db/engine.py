"""The async engine and session factory (asyncpg, sized pool, server-side timeouts)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from broker.db.hotpath import server_settings, unique_statement_name
from broker.settings import to_asyncpg_url

if TYPE_CHECKING:
    from broker.settings import Settings


def create_engine(settings: Settings, url: str | None = None) -> AsyncEngine:
    """Build the engine: asyncpg, a bounded pool, ``application_name`` and a statement timeout.

    The pool opens connections on demand up to pool size + overflow and keeps every one it opened:
    SQLAlchemy's overflow connections would otherwise be closed as they come back to a full pool and
    reopened on the next burst (a fork, authentication and type introspection each time).

    ``url`` names another server than ``BROKER_DATABASE_URL`` (the read replica). Behind PgBouncer in
    transaction mode (``BROKER_DATABASE_POOLER=pgbouncer``) no prepared statement is cached, each is
    named uniquely (two clients may share a server connection), and no session parameter is sent at
    connect (see :mod:`broker.db.hotpath`).
    """
    connect_args: dict[str, Any] = {
        "timeout": 10,
        "command_timeout": settings.db_statement_timeout_ms / 1000 + 5,
        "server_settings": server_settings(settings),
    }
    if settings.database_pooler == "pgbouncer":
        connect_args["statement_cache_size"] = 0
        connect_args["prepared_statement_cache_size"] = 0
        connect_args["prepared_statement_name_func"] = unique_statement_name
    return create_async_engine(
        to_asyncpg_url(url) if url else settings.async_database_url,
        pool_size=settings.db_pool_size + settings.db_max_overflow,
        max_overflow=0,
        pool_timeout=10,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (services commit before responding)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
