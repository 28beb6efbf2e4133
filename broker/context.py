"""The per-process runtime: settings, key ring and database session factory, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from broker.crypto.keyring import KeyRing
from broker.settings import Settings


@dataclass(frozen=True)
class Runtime:
    """What services need from the process. Handed to route handlers as the ``runtime`` dependency."""

    settings: Settings
    ring: KeyRing
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
