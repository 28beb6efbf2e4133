"""The async engine and session factory (asyncpg, sized pool, server-side timeouts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

if TYPE_CHECKING:
    from broker.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    """Build the engine: asyncpg, a bounded pool, ``application_name`` and a statement timeout.

    The pool opens connections on demand up to pool size + overflow and keeps every one it opened:
    SQLAlchemy's overflow connections would otherwise be closed as they come back to a full pool and
    reopened on the next burst (a fork, authentication and type introspection each time).
    """
    return create_async_engine(
        settings.async_database_url,
        pool_size=settings.db_pool_size + settings.db_max_overflow,
        max_overflow=0,
        pool_timeout=10,
        pool_recycle=1800,
        connect_args={
            "timeout": 10,
            "command_timeout": settings.db_statement_timeout_ms / 1000 + 5,
            "server_settings": {
                "application_name": "broker",
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "lock_timeout": str(settings.db_statement_timeout_ms),
                "idle_in_transaction_session_timeout": "60000",
            },
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (services commit before responding)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
