"""Client secrets and admin keys on the command line.

``broker tenants rotate-secret|secrets|revoke-secret`` and ``broker admin list-keys|revoke-key``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from broker.admin_keys import service as admin_keys
from broker.tenants import secrets

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing
    from broker.settings import Settings

ACTOR = "cli"


def _run(work: Any) -> Any:  # noqa: ANN401 - see broker.cli.main.run_with_session
    from broker.cli.main import run_with_session  # noqa: PLC0415 - main imports this module

    return run_with_session(work)


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


def _secret(view: secrets.SecretView) -> dict[str, Any]:
    return {
        "id": str(view.id),
        "algorithm": view.algorithm,
        "created_at": view.created_at.isoformat(),
        "last_used_at": view.last_used_at.isoformat() if view.last_used_at else None,
        "expires_at": view.expires_at.isoformat() if view.expires_at else None,
        "revoked_at": view.revoked_at.isoformat() if view.revoked_at else None,
        "live": view.live,
    }


@click.command("rotate-secret")
@click.argument("client_id")
@click.option(
    "--overlap",
    default=secrets.DEFAULT_OVERLAP_SECONDS,
    show_default=True,
    type=click.IntRange(0, secrets.MAX_OVERLAP_SECONDS),
    help="Seconds the older secrets keep working.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def rotate_secret(client_id: str, overlap: int, as_json: bool) -> None:
    """Issue a new secret for CLIENT_ID (shown once); older secrets expire after --overlap seconds."""

    async def work(session: AsyncSession, ring: KeyRing, _: Settings) -> Any:  # noqa: ANN401
        async with session.begin():
            return await secrets.rotate_secret(
                session, ring, client_id, overlap_seconds=overlap, actor=ACTOR, request_id=None
            )

    new, value, others = _run(work)
    if as_json:
        click.echo(json.dumps({**_secret(new), "secret": value, "others": [_secret(o) for o in others]}))
        return
    click.echo(f"new secret {new.id} for {client_id}, shown once:\n{value}")
    for other in others:
        if other.live:
            click.echo(f"secret {other.id} keeps working until {_when(other.expires_at)}")


@click.command("secrets")
@click.argument("client_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_secrets(client_id: str, as_json: bool) -> None:
    """List CLIENT_ID's secrets (never their values)."""

    async def work(session: AsyncSession, _ring: KeyRing, _: Settings) -> list[secrets.SecretView]:
        async with session.begin():
            return await secrets.list_secrets(session, client_id)

    views = _run(work)
    if as_json:
        click.echo(json.dumps([_secret(s) for s in views]))
        return
    click.echo(f"{'ID':<38}{'LIVE':<6}{'CREATED':<22}{'LAST USED':<22}EXPIRES / REVOKED")
    for s in views:
        ends = f"revoked {_when(s.revoked_at)}" if s.revoked_at else _when(s.expires_at)
        live = "yes" if s.live else "no"
        click.echo(f"{s.id!s:<38}{live:<6}{_when(s.created_at):<22}{_when(s.last_used_at):<22}{ends}")


@click.command("revoke-secret")
@click.argument("client_id")
@click.argument("secret_id", type=click.UUID)
def revoke_secret(client_id: str, secret_id: uuid.UUID) -> None:
    """Revoke one of CLIENT_ID's secrets now."""

    async def work(session: AsyncSession, _ring: KeyRing, _: Settings) -> secrets.SecretView:
        async with session.begin():
            return await secrets.revoke_secret(session, client_id, secret_id, actor=ACTOR, request_id=None)

    click.echo(f"secret {_run(work).id} revoked")


@click.command("list-keys")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_keys(as_json: bool) -> None:
    """List admin API keys (never their values)."""

    async def work(session: AsyncSession, _ring: KeyRing, _: Settings) -> list[dict[str, Any]]:
        async with session.begin():
            keys = await admin_keys.list_keys(session)
        return [
            {
                "id": str(k.id),
                "name": k.name,
                "scope": k.scope,
                "created_at": k.created_at.isoformat(),
                "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in keys
        ]

    rows = _run(work)
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else f"last used {row['last_used_at'] or 'never'}"
        click.echo(f"{row['id']}  {row['scope']:<6}{row['name']}  ({state})")


@click.command("revoke-key")
@click.argument("key_id", type=click.UUID)
def revoke_key(key_id: uuid.UUID) -> None:
    """Revoke an admin API key now."""

    async def work(session: AsyncSession, _ring: KeyRing, _: Settings) -> str:
        async with session.begin():
            return (await admin_keys.revoke_key(session, key_id, actor=ACTOR, request_id=None)).name

    click.echo(f"admin key {_run(work)!r} revoked")
