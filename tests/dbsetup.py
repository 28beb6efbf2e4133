"""Test database provisioning: a fresh database per test run, built by the real Alembic migrations."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]


def server_url() -> tuple[str, Any]:
    """The PostgreSQL server to test on: ``BROKER_TEST_DATABASE_URL`` or the embedded one."""
    url = os.environ.get("BROKER_TEST_DATABASE_URL")
    if url:
        return url, None
    from broker.db import embedded  # noqa: PLC0415

    server, embedded_url = embedded.start(ROOT / ".broker" / "test", database="broker_test_base")
    return embedded_url, server


def _asyncpg_kwargs(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {
        "user": parsed.username,
        "password": parsed.password,
        "database": parsed.database,
        "host": parsed.query.get("host", parsed.host),
        "port": parsed.port,
    }
    return {k: v for k, v in kwargs.items() if v not in (None, "")}


def database_of(url: str) -> str:
    """The database name of ``url``."""
    return str(make_url(url).database)


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database."""
    return make_url(url).set(database=database).render_as_string(hide_password=False)


async def _admin(url: str, statement: str) -> None:
    connection = await asyncpg.connect(**_asyncpg_kwargs(url))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def create_database(url: str, prefix: str = "broker_test") -> str:
    """Create a uniquely named empty database on the server of ``url``; return its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    asyncio.run(_admin(url, f'CREATE DATABASE "{name}"'))
    return with_database(url, name)


def drop_database(url: str) -> None:
    """Drop the database ``url`` names (connecting to the server's ``postgres`` database)."""
    name = make_url(url).database
    asyncio.run(_admin(with_database(url, "postgres"), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
