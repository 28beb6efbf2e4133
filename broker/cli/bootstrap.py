"""Start-up shared by every CLI command: validated settings, and the development fallbacks.

In development mode (the default) a missing database URL starts the embedded PostgreSQL under
``<data_dir>/pg`` and a missing key ring is generated in ``<data_dir>/keyring.json``; both are
announced loudly. In production mode nothing is filled in: missing settings stop start-up.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from broker.crypto.keyring import KeyRing, KeyRingError, ensure_dev_key_file
from broker.db import embedded
from broker.db import migrate as migrations
from broker.observability import metrics
from broker.settings import Settings, describe_validation_error

if TYPE_CHECKING:
    from collections.abc import Iterator


@dataclass
class Started:
    """Settings after the fallbacks, and the embedded server handle to keep alive (if any)."""

    settings: Settings
    embedded_server: Any = None


def load_settings() -> Settings:
    """Read settings or exit with one clear line per bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        click.echo(f"broker: invalid configuration\n{describe_validation_error(exc)}", err=True)
        sys.exit(2)


def start(*, quiet: bool = False) -> Started:
    """Settings with development fallbacks applied (exported to the environment for worker processes)."""
    settings = load_settings()
    server = None
    notes: list[str] = []
    if settings.env != "production":
        if settings.database_url is None:
            server, url = embedded.start(settings.data_dir)
            os.environ["BROKER_DATABASE_URL"] = url
            notes.append(f"embedded PostgreSQL in {settings.data_dir / 'pg'}")
        if settings.keys is None and settings.key_file is None:
            path = (settings.data_dir / "keyring.json").resolve()
            created = ensure_dev_key_file(path)
            os.environ["BROKER_KEY_FILE"] = str(path)
            notes.append(f"{'generated' if created else 'using'} development key ring {path}")
        settings = load_settings()
    if notes and not quiet:
        banner = "=" * 78
        click.secho(banner, fg="yellow", err=True)
        click.secho(" DEVELOPMENT MODE: not for production data", fg="yellow", bold=True, err=True)
        for note in notes:
            click.secho(f"  - {note}", fg="yellow", err=True)
        click.secho(banner, fg="yellow", err=True)
    return Started(settings=settings, embedded_server=server)


def load_ring(settings: Settings) -> KeyRing:
    """The configured key ring, or a one-line error (exit 1) naming what is wrong."""
    try:
        return KeyRing.from_settings(settings)
    except KeyRingError as exc:
        raise click.ClickException(f"key ring: {exc}") from None


def migrate_database(settings: Settings) -> None:
    """Apply migrations, or a one-line error (exit 1) when the database or the scripts cannot be reached."""
    assert settings.database_url is not None  # noqa: S101 - start() guarantees it
    url = settings.database_migrate_url or settings.database_url
    if settings.database_pooler == "pgbouncer" and settings.database_migrate_url is None:
        raise click.ClickException(
            "BROKER_DATABASE_POOLER=pgbouncer: set BROKER_DATABASE_MIGRATE_URL to a direct connection to the "
            "primary (migrations hold a session advisory lock, which transaction pooling cannot keep)"
        )
    try:
        migrations.upgrade(url)
    except migrations.MigrationsNotFound as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
        raise click.ClickException(f"cannot migrate the database ({type(exc).__name__}: {reason})") from None


@contextlib.contextmanager
def metrics_directory(settings: Settings) -> Iterator[None]:
    """The directory this server's workers share their metrics through, cleared first (``BROKER_METRICS_DIR``).

    When none is configured a private temporary one is made, handed to the workers through the
    environment, and removed when the server stops.
    """
    if settings.metrics_dir is not None:
        metrics.clear_directory(settings.metrics_dir)
        yield
        return
    with tempfile.TemporaryDirectory(prefix="broker-metrics-") as directory:
        os.environ["BROKER_METRICS_DIR"] = directory
        try:
            yield
        finally:
            os.environ.pop("BROKER_METRICS_DIR", None)
