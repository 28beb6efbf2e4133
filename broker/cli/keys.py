"""``broker keys``: status, rotate, reencrypt, retire, shred.

Ring keys live in configuration (``BROKER_KEYS`` or a ``BROKER_KEY_FILE``), never in the database.
``rotate`` and ``retire`` change the configuration: they rewrite a key file in place, or print the new
``BROKER_KEYS`` value for the operator to store; every replica then needs a restart to see it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from broker.cli import bootstrap
from broker.crypto.keyring import KeyRingError, change_file, change_spec, generate_key
from broker.keys import reencrypt as reencryption
from broker.keys import service

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing
    from broker.settings import Settings

ACTOR = "cli"


def _run(work: Any) -> Any:  # noqa: ANN401 - see broker.cli.main.run_with_session
    from broker.cli.main import run_with_session  # noqa: PLC0415 - main imports this module

    return run_with_session(work)


@click.group()
def keys() -> None:
    """Encryption keys: status, rotation, re-encryption, retirement, crypto-shredding."""


@keys.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(as_json: bool) -> None:
    """The active key, and how many data keys and rows each ring key protects, per table."""

    async def work(session: AsyncSession, ring: KeyRing, _: Settings) -> service.KeyStatus:
        async with session.begin():
            return await service.status(session, ring)

    report = _run(work)
    if as_json:
        body = asdict(report) | {"rows_by_key": report.rows_by_key(), "pending": report.pending()}
        click.echo(json.dumps(body))
        return
    click.echo(f"active key: {report.active}    ring: {', '.join(report.ring)}")
    click.echo(f"data keys by wrapping key: {_counts(report.data_keys)}")
    click.echo(f"{'COLUMN':<32}{'SEALED DIRECTLY (v1)':<28}UNDER DATA KEYS (v2), BY WRAPPING KEY")
    for name, usage in report.columns.items():
        direct = _counts(usage.direct) + (f"  other: {_counts(usage.other)}" if usage.other else "")
        click.echo(f"{name:<32}{direct:<28}{_counts(usage.via_data_keys)}")
    click.echo(f"rows by ring key: {_counts(report.rows_by_key())}")
    click.echo(f"left to re-encrypt: {report.pending()}")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "-"


def _new_kid() -> str:
    return "k" + datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def _change_ring(*, add: tuple[str, str] | None = None, activate: str | None = None, remove: str | None = None) -> str:
    """Apply a change to the configured ring; return what the operator must do next."""
    settings = bootstrap.load_settings()
    try:
        if settings.keys is not None:
            value = change_spec(settings.keys.get_secret_value(), add=add, activate=activate, remove=remove)
            return f"set BROKER_KEYS on every replica to:\nBROKER_KEYS={value}"
        path = settings.key_file
        if path is None and settings.env != "production":
            path = (settings.data_dir / "keyring.json").resolve()
        if path is None or not path.exists():
            raise click.ClickException("no key ring configured: set BROKER_KEYS or BROKER_KEY_FILE")
        ring = change_file(path, add=add, activate=activate, remove=remove)
    except KeyRingError as exc:
        raise click.ClickException(f"key ring: {exc}") from None
    return f"wrote {path} (active: {ring.active_kid}; keys: {', '.join(ring.keys)}); restart every replica"


@keys.command("rotate")
@click.option("--kid", default=None, help="Id of the new key (default k<UTC timestamp>).")
@click.option("--stage", is_flag=True, help="Add the new key without making it active (several replicas).")
@click.option("--activate", "activate_kid", default=None, help="Make an already staged key active instead.")
def rotate(kid: str | None, stage: bool, activate_kid: str | None) -> None:
    """Add a new ring key and make it active; old keys stay for decryption.

    With several replicas, first `--stage` the key everywhere (restart), then `--activate KID` it
    (restart), so no replica ever meets a data key wrapped by a key it does not hold. Then run
    `broker keys reencrypt`.
    """
    if activate_kid is not None:
        if stage or kid is not None:
            raise click.UsageError("--activate takes an existing key: do not combine it with --kid or --stage")
        click.echo(f"key {activate_kid} is now active\n" + _change_ring(activate=activate_kid))
        return
    new_kid = kid or _new_kid()
    action = _change_ring(add=(new_kid, generate_key()), activate=None if stage else new_kid)
    state = "staged (not active yet)" if stage else "active"
    click.echo(f"new key {new_kid} {state}\n{action}")


@keys.command("reencrypt")
@click.option("--batch-size", default=reencryption.DEFAULT_BATCH, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--pause", default=0.0, show_default=True, type=click.FloatRange(0, 60), help="Seconds between batches.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def reencrypt_command(batch_size: int, pause: float, as_json: bool) -> None:
    """Rewrap every data key under the active key and move old rows to data keys, online.

    Safe beside live traffic and on several replicas at once; resumable after a kill (run it again).
    """

    async def work(session: AsyncSession, ring: KeyRing, _: Settings) -> reencryption.ReencryptResult:
        missing = await service.missing_keys(session, ring)
        if missing:
            raise click.ClickException("; ".join(use.describe() for use in missing) + ", but the ring lacks it")
        total = await reencryption.pending(session, ring)
        with click.progressbar(length=total, label="re-encrypting", file=sys.stderr, show_pos=True) as bar:
            return await reencryption.reencrypt(session, ring, batch_size=batch_size, pause=pause, progress=bar.update)

    result = _run(work)
    summary = {
        "data_keys": result.data_keys,
        "rows": result.rows,
        "seconds": round(result.seconds, 3),
        "rows_per_second": round(result.rows_per_second, 1),
        "unreadable": result.unreadable,
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"rewrapped {result.data_keys} data key(s), re-encrypted {result.rows} row(s) "
            f"in {result.seconds:.2f}s ({result.rows_per_second:.0f}/s)"
        )
    if result.unreadable:
        raise click.ClickException(f"{len(result.unreadable)} row(s) could not be opened: {result.unreadable[:10]}")


@keys.command("retire")
@click.argument("kid")
@click.option("--check-only", is_flag=True, help="Only check; do not change the configuration.")
def retire(kid: str, check_only: bool) -> None:
    """Remove ring key KID, refusing while it is active or any data key or row still needs it."""

    async def work(session: AsyncSession, ring: KeyRing, _: Settings) -> service.KeyUse:
        return await service.check_retire(session, ring, kid)

    _run(work)
    if check_only:
        click.echo(f"key {kid} is no longer needed: it may be removed from the ring")
        return
    click.echo(f"key {kid} is no longer needed\n" + _change_ring(remove=kid))


@keys.command("shred")
@click.argument("client_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def shred(client_id: str, yes: bool, as_json: bool) -> None:
    """Crypto-shred a tenant: destroy its data key; its tokens, users and identity data become unrecoverable."""
    if not yes:
        click.confirm(f"destroy every encrypted record of tenant {client_id} for good?", abort=True)

    async def work(session: AsyncSession, ring: KeyRing, _: Settings) -> service.Shredded:
        return await service.shred_tenant(session, ring, client_id, actor=ACTOR, request_id=None)

    result = _run(work)
    if as_json:
        click.echo(json.dumps(asdict(result)))
    else:
        click.echo(
            f"shredded tenant {client_id}: {len(result.data_keys)} data key(s) destroyed, "
            f"{result.grants_revoked} grant(s) revoked, {result.users_removed} user(s) removed"
        )


def refuse_missing_keys(settings: Settings) -> None:
    """Stop ``broker serve`` with one clear line when the ring lacks a key still in use.

    Each serving process checks again at start-up (:func:`broker.keys.service.check_ring_on_start`).
    """
    import asyncio  # noqa: PLC0415 - only this check needs an event loop here

    from broker.context import Runtime  # noqa: PLC0415
    from broker.crypto.keyring import KeyRing  # noqa: PLC0415
    from broker.db.engine import create_engine, create_sessionmaker  # noqa: PLC0415

    async def check() -> None:
        engine = create_engine(settings)
        try:
            runtime = Runtime(settings, KeyRing.from_settings(settings), engine, create_sessionmaker(engine))
            await service.check_ring_on_start(runtime)
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except KeyRingError as exc:
        raise click.ClickException(f"key ring: {exc}") from None
