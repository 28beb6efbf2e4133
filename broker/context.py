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
    (:mod:`broker.tenants.clients`); ``upstreams`` is the pooled client of gateway tenants' upstreams
    (:mod:`broker.gateway.client`), with its per-upstream circuit breakers and the credentials cache.
    """

    settings: Settings
    ring: KeyRing
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    hot: HotPool = field(init=False)
    clients: ClientCache = field(init=False)
    upstreams: UpstreamClient = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hot", HotPool(self.settings))
        object.__setattr__(self, "clients", ClientCache())
        object.__setattr__(self, "upstreams", UpstreamClient(self.settings))

    async def close(self) -> None:
        """Close the hot pool and dispose of the engine's connections."""
        try:
            await self.upstreams.aclose()
            await self.hot.close()
        finally:
            await self.engine.dispose()
