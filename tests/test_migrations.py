"""The migrations on a scratch database: up, down to nothing, up again, and no drift from the models."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from broker.db import migrate
from broker.db import models as _models  # noqa: F401 - registers every table on Base.metadata
from broker.db.base import Base
from broker.settings import to_asyncpg_url
from tests import dbsetup

T = TypeVar("T")

EXPECTED_TABLES = {
    "tenants",
    "client_secrets",
    "audiences",
    "audience_members",
    "audience_policies",
    "users",
    "grants",
    "grant_parties",
    "refresh_tokens",
    "access_tokens",
    "audit_events",
    "admin_keys",
    "tenant_keys",
    "audit_chains",
    "audit_blocks",
    "audit_seal_mark",
    "webhook_endpoints",
    "webhook_deliveries",
    "webhook_attempts",
    "tenant_upstreams",
    "upstream_grants",
    "upstream_calls",
}


@pytest.fixture
def scratch() -> Iterator[str]:
    url = dbsetup.create_database(os.environ["BROKER_DATABASE_URL"], prefix="broker_migrations")
    try:
        yield url
    finally:
        dbsetup.drop_database(url)


def on_connection(url: str, work: Callable[[Any], T]) -> T:
    """Run ``work(sync_connection)`` against ``url`` in a fresh engine and event loop."""

    async def _run() -> T:
        engine = create_async_engine(to_asyncpg_url(url))
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(_run())


def relations(url: str) -> dict[str, str]:
    """Every relation (table, index, sequence, view) and type in the public schema, name -> kind."""

    def _query(connection: Any) -> dict[str, str]:
        rows = connection.execute(
            text(
                "SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' "
                "UNION ALL "
                "SELECT t.typname, 'type' FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd') "
            )
        ).all()
        return {row[0]: row[1] for row in rows}

    return on_connection(url, _query)


def tables(url: str) -> set[str]:
    return {name for name, kind in relations(url).items() if kind == "r"}


def current_revision(url: str) -> str | None:
    return on_connection(url, lambda connection: MigrationContext.configure(connection).get_current_revision())


def test_upgrade_downgrade_upgrade(scratch):
    migrate.upgrade(scratch)
    assert tables(scratch) == EXPECTED_TABLES | {"alembic_version"}
    assert current_revision(scratch) == migrate.head_revision()

    migrate.downgrade(scratch, "base")
    leftovers = relations(scratch)
    assert set(leftovers) <= {"alembic_version", "alembic_version_pkc"}, leftovers
    assert current_revision(scratch) is None

    migrate.upgrade(scratch)
    assert tables(scratch) == EXPECTED_TABLES | {"alembic_version"}
    assert current_revision(scratch) == migrate.head_revision()


def test_upgrade_is_idempotent(scratch):
    migrate.upgrade(scratch)
    before = relations(scratch)
    migrate.upgrade(scratch)
    assert relations(scratch) == before


def test_models_match_the_migrations(scratch):
    migrate.upgrade(scratch)

    def _diff(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(context, Base.metadata))

    assert on_connection(scratch, _diff) == []


def test_seeded_cra_partner_audiences(scratch):
    migrate.upgrade(scratch)

    def _urns(connection: Any) -> set[str]:
        return set(connection.execute(text("SELECT urn FROM audiences")).scalars())

    assert on_connection(scratch, _urns) >= {
        "urn:plaid:params:cra-partner:experian",
        "urn:plaid:params:cra-partner:fannie-mae",
        "urn:plaid:params:cra-partner:freddie-mac",
    }


def test_concurrent_upgrades_are_serialised_by_the_advisory_lock(scratch):
    """Replicas may run ``broker migrate`` together (separate processes: alembic is not thread-safe)."""
    code = "import sys; from broker.db import migrate; migrate.upgrade(sys.argv[1])"
    processes = [
        subprocess.Popen([sys.executable, "-c", code, scratch], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=60)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert tables(scratch) == EXPECTED_TABLES | {"alembic_version"}
    assert current_revision(scratch) == migrate.head_revision()
