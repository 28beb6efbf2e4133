"""Programmatic Alembic: upgrade to head (under the advisory lock that ``migrations/env.py`` takes)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection


def migrations_dir() -> Path:
    """Where the migration scripts live: ``BROKER_MIGRATIONS_DIR`` or ``migrations/`` beside the package."""
    override = os.environ.get("BROKER_MIGRATIONS_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "migrations"


class MigrationsNotFound(Exception):
    """The migration scripts are not where broker looks for them."""


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at ``database_url`` and the project's migrations."""
    if not (migrations_dir() / "env.py").is_file():
        msg = f"no migrations at {migrations_dir()}; set BROKER_MIGRATIONS_DIR to the project's migrations/ folder"
        raise MigrationsNotFound(msg)
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``. Safe to run from several replicas at once."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Revert migrations down to ``revision`` (``base`` for an empty schema)."""
    command.downgrade(alembic_config(database_url), revision)


@functools.cache
def head_revision() -> str | None:
    """The newest revision among the migration scripts."""
    return ScriptDirectory(str(migrations_dir())).get_current_head()


async def current_revision(connection: AsyncConnection) -> str | None:
    """The revision the database is at."""

    def _current(sync_connection: object) -> str | None:
        return MigrationContext.configure(sync_connection).get_current_revision()  # type: ignore[arg-type]

    return await connection.run_sync(_current)
