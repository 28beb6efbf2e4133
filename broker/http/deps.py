"""Dependency markers for route handlers: ``runtime: RuntimeDep`` and ``session: SessionDep``."""

from __future__ import annotations

from typing import TypeAlias

from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from broker.context import Runtime

RuntimeDep: TypeAlias = NamedDependency[Runtime]
SessionDep: TypeAlias = NamedDependency[AsyncSession]
