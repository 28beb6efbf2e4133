"""The ``broker`` command line. Each command delegates in a few lines to services."""

from __future__ import annotations

import click

from broker.cli import bootstrap
from broker.db import migrate as migrations


@click.group()
@click.version_option(package_name="broker")
def cli() -> None:
    """broker: a Plaid-compatible multi-party token exchange broker."""


@cli.command()
def migrate() -> None:
    """Apply database migrations (safe to run from several replicas at once)."""
    started = bootstrap.start()
    assert started.settings.database_url is not None  # noqa: S101 - bootstrap guarantees it
    migrations.upgrade(started.settings.database_url)
    click.echo(f"database at revision {migrations.head_revision()}")


@cli.command()
@click.option("--host", default=None, help="Address to bind (default BROKER_HOST, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default BROKER_PORT, 8000).")
@click.option("--workers", default=None, type=int, help="Worker processes (default BROKER_WORKERS, 1).")
@click.option("--no-migrate", is_flag=True, help="Do not apply migrations before serving.")
def serve(host: str | None, port: int | None, workers: int | None, no_migrate: bool) -> None:
    """Migrate, then serve the API with granian."""
    from granian import Granian  # noqa: PLC0415
    from granian.constants import Interfaces  # noqa: PLC0415

    started = bootstrap.start()
    settings = started.settings
    assert settings.database_url is not None  # noqa: S101 - bootstrap guarantees it
    if not no_migrate:
        migrations.upgrade(settings.database_url)
    bind_host, bind_port = host or settings.host, port or settings.port
    click.echo(f"broker serving on http://{bind_host}:{bind_port} (OpenAPI UI at /schema)", err=True)
    Granian(
        "broker.app:create_app",
        factory=True,
        address=bind_host,
        port=bind_port,
        interface=Interfaces.ASGI,
        workers=workers or settings.workers,
        log_access=False,
        log_enabled=True,
    ).serve()


def main() -> None:
    """Console entry point."""
    cli()
