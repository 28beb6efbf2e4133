"""The ``broker`` command line. Each command delegates in a few lines to services."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, TypeVar

import click

from broker import errors
from broker.admin_keys import service as admin_keys
from broker.audit import sealer
from broker.cli import audit as audit_cli
from broker.cli import bootstrap
from broker.cli import check as check_cli
from broker.cli import demo as demo_world
from broker.cli import gateway as gateway_cli
from broker.cli import keys as keys_cli
from broker.cli import secrets as secrets_cli
from broker.db import migrate as migrations
from broker.db.engine import create_engine, create_sessionmaker
from broker.tenants import service as tenants

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing
    from broker.settings import Settings

T = TypeVar("T")
CLI_ACTOR = "cli"


def run_with_session(work: Callable[[AsyncSession, KeyRing, Settings], Awaitable[T]]) -> T:
    """Start (embedded database and key ring in development), migrate, and run ``work`` with a session.

    Broker errors (bad input, conflicts) become a one-line message and exit status 1.
    """
    started = bootstrap.start()  # holds the embedded server (if any) while this function runs
    settings = started.settings
    ring = bootstrap.load_ring(settings)
    bootstrap.migrate_database(settings)

    async def _run() -> T:
        engine = create_engine(settings)
        try:
            async with create_sessionmaker(engine)() as session:
                return await work(session, ring, settings)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(_run())
    except errors.BrokerError as exc:
        raise click.ClickException(exc.description or type(exc).__name__) from None


def _split_scopes(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(part for part in value.replace(",", " ").split(" ") if part)


@click.group()
@click.version_option(package_name="broker")
def cli() -> None:
    """broker: a Plaid-compatible multi-party token exchange broker."""


@cli.command()
def migrate() -> None:
    """Apply database migrations (safe to run from several replicas at once)."""
    started = bootstrap.start()
    bootstrap.load_ring(started.settings)
    bootstrap.migrate_database(started.settings)
    click.echo(f"database at revision {migrations.head_revision()}")


@cli.command()
@click.option("--host", default=None, help="Address to bind (default BROKER_HOST, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default BROKER_PORT, 8000).")
@click.option("--workers", default=None, type=int, help="Worker processes (default BROKER_WORKERS, 1).")
@click.option("--no-migrate", is_flag=True, help="Do not apply migrations before serving.")
def serve(host: str | None, port: int | None, workers: int | None, no_migrate: bool) -> None:
    """Migrate, then serve the API with granian."""
    from granian import Granian  # noqa: PLC0415
    from granian.constants import Interfaces, Loops  # noqa: PLC0415

    started = bootstrap.start()
    settings = started.settings
    bootstrap.load_ring(settings)  # fail here with one line, not in every worker with a traceback
    if not no_migrate:
        bootstrap.migrate_database(settings)
    keys_cli.refuse_missing_keys(settings)  # a key retired too early: one line here, not a traceback per worker
    bind_host, bind_port = host or settings.host, port or settings.port
    click.echo(f"broker serving on http://{bind_host}:{bind_port} (OpenAPI UI at /schema)", err=True)
    with (
        bootstrap.metrics_directory(settings),  # the workers sum their metrics through it
        sealer.sealing_process(settings),  # audit sealing beside the workers, not inside them
    ):
        Granian(
            "broker.app:create_app",
            factory=True,
            address=bind_host,
            port=bind_port,
            interface=Interfaces.ASGI,
            loop=Loops.auto,  # uvloop, a dependency outside Windows: the loop that drives asyncpg's sockets
            workers=workers or settings.workers,
            log_access=False,
            log_enabled=True,
        ).serve()


@cli.command()
@click.option("--no-migrate", is_flag=True, help="Do not apply migrations first.")
def worker(no_migrate: bool) -> None:
    """Deliver partner webhooks from the outbox until interrupted (every `serve` process does this too)."""
    from broker.app import build_runtime  # noqa: PLC0415 - only this command needs the runtime
    from broker.http import logging as http_logging  # noqa: PLC0415
    from broker.webhooks import delivery  # noqa: PLC0415

    started = bootstrap.start()
    settings = started.settings
    bootstrap.load_ring(settings)
    if not no_migrate:
        bootstrap.migrate_database(settings)
    http_logging.configure(settings)
    runtime = build_runtime(settings)

    async def _run() -> None:
        try:
            await delivery.run_forever(runtime)
        finally:
            await runtime.close()

    click.echo("broker webhook worker running (Ctrl-C to stop)", err=True)
    asyncio.run(_run())


@cli.group()
def admin() -> None:
    """Admin API keys."""


@admin.command("create-key")
@click.option("--name", required=True, help="Who or what uses the key (audited as admin:<name>).")
@click.option("--scope", type=click.Choice(admin_keys.SCOPES), default="write", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def create_key(name: str, scope: str, as_json: bool) -> None:
    """Issue an admin API key (printed once) for /admin/v1."""

    async def work(session: AsyncSession, ring: KeyRing, _: Settings) -> tuple[str, str]:
        async with session.begin():
            key, value = await admin_keys.create_key(
                session, ring, name=name, scope=scope, actor=CLI_ACTOR, request_id=None
            )
        return str(key.id), value

    key_id, value = run_with_session(work)
    if as_json:
        click.echo(json.dumps({"id": key_id, "name": name, "scope": scope, "key": value}))
    else:
        click.echo(f"admin key {name!r} ({scope}), shown once:\n{value}")


@cli.group("tenants")
def tenants_group() -> None:
    """Tenants (API clients)."""


@tenants_group.command("create")
@click.option("--name", required=True, help="Display name.")
@click.option("--kind", type=click.Choice(["customer", "partner"]), default="customer", show_default=True)
@click.option("--scopes", default=None, help="Allowed scopes, space- or comma-separated (default: built-ins).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tenants_create(name: str, kind: str, scopes: str | None, as_json: bool) -> None:
    """Create a tenant; prints its client_id and secret (the secret is shown once)."""
    spec = tenants.TenantSpec(name=name, kind=kind, allowed_scopes=_split_scopes(scopes))

    async def work(session: AsyncSession, ring: KeyRing, _: Settings) -> dict[str, object]:
        async with session.begin():
            tenant, secret = await tenants.create_tenant(session, ring, spec, actor=CLI_ACTOR, request_id=None)
        return {
            "client_id": tenant.client_id,
            "secret": secret,
            "name": tenant.name,
            "kind": tenant.kind,
            "allowed_scopes": list(tenant.allowed_scopes),
            "default_scopes": list(tenant.default_scopes),
        }

    created = run_with_session(work)
    if as_json:
        click.echo(json.dumps(created))
    else:
        click.echo(f"client_id: {created['client_id']}\nsecret:    {created['secret']}  (shown once)")


@tenants_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tenants_list(as_json: bool) -> None:
    """List every tenant (never secrets)."""

    async def work(session: AsyncSession, _ring: KeyRing, _: Settings) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        after: str | None = None
        while True:
            async with session.begin():
                page, after = await tenants.list_tenants(session, limit=tenants.MAX_PAGE_SIZE, after=after)
            rows += [{"client_id": t.client_id, "name": t.name, "kind": t.kind, "status": t.status} for t in page]
            if after is None:
                return rows

    rows = run_with_session(work)
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'CLIENT_ID':<26}{'KIND':<10}{'STATUS':<10}NAME")
    for row in rows:
        click.echo(f"{row['client_id']!s:<26}{row['kind']!s:<10}{row['status']!s:<10}{row['name']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def demo(as_json: bool) -> None:
    """Seed a lender, a second client and the three CRA partners; print credentials and curl calls."""

    async def work(session: AsyncSession, ring: KeyRing, settings: Settings) -> demo_world.Demo:
        return await demo_world.seed(session, ring, settings.issuer.rstrip("/"))

    seeded = run_with_session(work)
    click.echo(demo_world.as_json(seeded) if as_json else demo_world.as_text(seeded))


cli.add_command(keys_cli.keys)
cli.add_command(check_cli.check)
cli.add_command(audit_cli.audit)
admin.add_command(secrets_cli.list_keys)
admin.add_command(secrets_cli.revoke_key)
tenants_group.add_command(secrets_cli.rotate_secret)
tenants_group.add_command(secrets_cli.list_secrets)
tenants_group.add_command(secrets_cli.revoke_secret)
tenants_group.add_command(gateway_cli.set_upstream)
tenants_group.add_command(gateway_cli.show_upstream)
tenants_group.add_command(gateway_cli.remove_upstream)


def main() -> None:
    """Console entry point."""
    cli()
