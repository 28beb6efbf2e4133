"""A plain asyncpg pool for the hot paths: one prepared statement, one round trip, no ORM.

``/oauth/token`` (``client_credentials``) and ``/oauth/introspect`` answer with a single statement each
(broker.oauth.fastpath). Through SQLAlchemy a statement costs about a millisecond of Python on our
machines before it reaches the wire; through asyncpg's prepared-statement cache it costs a tenth of
that. Everything else keeps the SQLAlchemy engine.

Invariants:
    * No session state: every statement runs in autocommit (its own implicit transaction), or inside
      one explicit transaction that ends before the connection goes back to the pool
      (:meth:`HotPool.transaction`), so a connection can go back to the pool, or through a
      transaction-mode pooler, between requests.
    * The pool is sized once (``BROKER_DB_POOL_SIZE``) and never closes idle connections under load:
      no reconnect, re-parse or type introspection in the middle of a burst. New connections prepare
      the registered hot statements when they are opened (:func:`register`), which also runs asyncpg's
      type introspection for their array and uuid types before any request needs it.
    * Behind PgBouncer in transaction mode (``BROKER_DATABASE_POOLER=pgbouncer``) no statement is
      prepared by name and none is cached (a server connection may change between two transactions),
      no session parameter is sent at connect (PgBouncer refuses unknown startup parameters; set
      ``statement_timeout`` and friends on the database role instead), and every statement runs in an
      explicit transaction, so its parse and execute reach the same server connection. That costs two
      more round trips (``BEGIN``, ``COMMIT``) per hot statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import make_url

from broker.settings import to_asyncpg_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from broker.settings import Settings

_PREPARED: list[str] = []
_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]
SUSPEND_SECONDS = 5.0
log = structlog.get_logger("broker.db")


def register(sql: str) -> str:
    """Declare a hot statement: every new pooled connection prepares it. Returns ``sql``."""
    _PREPARED.append(sql)
    return sql


def server_settings(settings: Settings) -> dict[str, str]:
    """Session parameters sent at connect: none behind PgBouncer (see the module docstring)."""
    if settings.database_pooler == "pgbouncer":
        return {}
    return {
        "application_name": "broker",
        "statement_timeout": str(settings.db_statement_timeout_ms),
        "lock_timeout": str(settings.db_statement_timeout_ms),
        "idle_in_transaction_session_timeout": "60000",
    }


def unique_statement_name() -> str:
    """A prepared-statement name no other client of a shared (pooled) server connection uses."""
    return f"__broker_{uuid.uuid4().hex}__"


def connect_kwargs(settings: Settings, url_text: str | None = None) -> dict[str, Any]:
    """Asyncpg connection arguments for the configured database, with the same server settings as the engine.

    The arguments come from the URL exactly as the engine's dialect reads it, so both pools reach the same
    server the same way: a socket directory and port given as query parameters (``?host=/run/pg&port=5433``),
    ``?ssl=require``, several hosts.
    """
    url = make_url(to_asyncpg_url(url_text) if url_text else settings.async_database_url)
    _, kwargs = _DIALECT.create_connect_args(url)  # type: ignore[no-untyped-call]
    kwargs.pop("prepared_statement_cache_size", None)  # SQLAlchemy's own argument, not asyncpg's
    kwargs = {key: value for key, value in kwargs.items() if value not in (None, "")}
    kwargs["timeout"] = 10
    kwargs["command_timeout"] = settings.db_statement_timeout_ms / 1000 + 5
    kwargs["server_settings"] = server_settings(settings)
    if settings.database_pooler == "pgbouncer":
        kwargs["statement_cache_size"] = 0
    return kwargs


async def _prepare_hot_statements(connection: asyncpg.Connection) -> None:
    for sql in _PREPARED:
        await connection.prepare(sql)


async def _reset(connection: asyncpg.Connection) -> None:
    """Hand a connection back without asyncpg's default reset round trip (``RESET ALL``, ``UNLISTEN *`` ...).

    Hot statements leave no session state to reset: no ``SET``, no ``LISTEN``, no advisory lock, and no
    transaction, unless a statement was interrupted midway, which is rolled back here.
    """
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


class HotPool:
    """The process's asyncpg pool, opened on first use (a plain class: Litestar inspects dataclasses).

    ``url`` names another server than ``BROKER_DATABASE_URL`` (the read replica's pool).
    """

    def __init__(self, settings: Settings, url: str | None = None) -> None:
        self._settings = settings
        self._url = url
        self._down_until = 0.0
        self._pooled = settings.database_pooler == "pgbouncer"
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"HotPool(open={self._pool is not None})"

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = self._pool or await self._open()
        async with pool.acquire() as connection:
            if self._pooled:
                async with connection.transaction():
                    yield connection
            else:
                yield connection

    async def _open(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                size = self._settings.db_pool_size
                self._pool = await asyncpg.create_pool(
                    min_size=1,
                    max_size=size,
                    max_inactive_connection_lifetime=300,
                    init=None if self._pooled else _prepare_hot_statements,
                    reset=_reset,
                    **connect_kwargs(self._settings, self._url),
                )
            return self._pool

    async def fetchrow(self, sql: str, *args: object) -> asyncpg.Record | None:
        """Run one statement in autocommit and return its first row."""
        async with self._connection() as connection:
            row: asyncpg.Record | None = await connection.fetchrow(sql, *args)
            return row

    async def fetchval(self, sql: str, *args: object) -> object:
        """Run one statement in autocommit and return the first column of its first row."""
        async with self._connection() as connection:
            return await connection.fetchval(sql, *args)

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        """Run one statement in autocommit and return every row (small results only)."""
        async with self._connection() as connection:
            rows: list[asyncpg.Record] = await connection.fetch(sql, *args)
            return rows

    async def execute(self, sql: str, *args: object) -> None:
        """Run one statement in autocommit."""
        async with self._connection() as connection:
            await connection.execute(sql, *args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One connection inside ``BEGIN`` ... ``COMMIT`` (rolled back if the block raises).

        For the few hot paths that must read under a lock before they write (refresh rotation). The
        transaction ends before the connection goes back to the pool, so no state outlives the block.
        """
        pool = self._pool or await self._open()
        async with pool.acquire() as connection, connection.transaction():
            yield connection

    @property
    def available(self) -> bool:
        """False for a while after :meth:`suspend` (an optional pool, the replica's, that failed)."""
        return self._down_until == 0.0 or time.monotonic() >= self._down_until

    def suspend(self, exc: BaseException) -> None:
        """Stop using this (optional) pool for :data:`SUSPEND_SECONDS` after a failure; log it once."""
        if self.available:
            log.warning("read replica unavailable", error=type(exc).__name__, retry_in_seconds=SUSPEND_SECONDS)
        self._down_until = time.monotonic() + SUSPEND_SECONDS

    def usage(self) -> tuple[int, int, int]:
        """``(in_use, idle, max)`` connections of the pool (zeros before it opens), for the metrics."""
        pool = self._pool
        if pool is None:
            return 0, 0, self._settings.db_pool_size
        size, idle = pool.get_size(), pool.get_idle_size()
        return size - idle, idle, pool.get_max_size()

    async def close(self) -> None:
        """Close every pooled connection (at shutdown)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
