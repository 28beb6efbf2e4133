"""The per-process runtime: settings, key ring, database access and caches, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from broker.crypto.keyring import KeyRing
from broker.db.hotpath import HotPool
from broker.gateway.client import UpstreamClient
from broker.settings import Settings
from broker.tenants.clients import ClientCache


@dataclass(frozen=True)
class Runtime:
    """What services need from the process. Handed to route handlers as the ``runtime`` dependency.

    ``engine``/``sessions`` serve every path through SQLAlchemy; ``hot`` is the asyncpg pool of the
    single-statement hot paths (:mod:`broker.db.hotpath`); ``clients`` caches authenticated clients
    (:mod:`broker.tenants.clients`). With ``BROKER_DATABASE_READ_URL``, ``read`` is an asyncpg pool on
    the replica (introspection) and ``read_engine``/``read_sessions`` serve admin reads. ``upstreams``
    is the pooled client of gateway tenants' upstreams (:mod:`broker.gateway.client`), with its
    per-upstream circuit breakers.
    """

    settings: Settings
    ring: KeyRing
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    read_engine: AsyncEngine | None = None
    read_sessions: async_sessionmaker[AsyncSession] | None = None
    hot: HotPool = field(init=False)
    read: HotPool | None = field(init=False)
    clients: ClientCache = field(init=False)
    upstreams: UpstreamClient = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hot", HotPool(self.settings))
        read_url = self.settings.database_read_url
        object.__setattr__(self, "read", HotPool(self.settings, read_url) if read_url else None)
        object.__setattr__(self, "clients", ClientCache())
        object.__setattr__(self, "upstreams", UpstreamClient(self.settings))

    async def close(self) -> None:
        """Close the hot pools and dispose of the engines' connections."""
        try:
            await self.upstreams.aclose()
            await self.hot.close()
            if self.read is not None:
                await self.read.close()
        finally:
            await self.engine.dispose()
            if self.read_engine is not None:
                await self.read_engine.dispose()
