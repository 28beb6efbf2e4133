"""``broker audit``: seal the hash chains, verify them."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from broker import errors
from broker.audit import chain
from broker.tenants import service as tenants

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing
    from broker.settings import Settings


def _run(work: Any) -> Any:  # noqa: ANN401 - see broker.cli.main.run_with_session
    from broker.cli.main import run_with_session  # noqa: PLC0415 - main imports this module

    return run_with_session(work)


@click.group()
def audit() -> None:
    """The audit log's per-tenant hash chains."""


@audit.command("seal")
def seal() -> None:
    """Link every not yet sealed audit event into its tenant's hash chain (serving processes do this too)."""

    async def work(session: AsyncSession, ring: KeyRing, _: Settings) -> int:
        return await chain.seal_pending(session, ring, wait=True)

    click.echo(f"sealed {_run(work)} event(s)")


@audit.command("verify")
@click.option("--client-id", default=None, help="Only this tenant's chain.")
@click.option("--global", "only_global", is_flag=True, help="Only the chain of events that concern no tenant.")
@click.option("--no-seal", is_flag=True, help="Do not seal pending events first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify(client_id: str | None, only_global: bool, no_seal: bool, as_json: bool) -> None:
    """Recompute the hash chains; exit 1 if any row was edited or deleted."""

    async def work(session: AsyncSession, ring: KeyRing, _: Settings) -> chain.Verification:
        tenant_id = None
        if client_id is not None:
            async with session.begin():
                tenant_id = (await tenants.get_tenant(session, client_id)).id
        if not no_seal:
            await chain.seal_pending(session, ring, wait=True)
        return await chain.verify(session, ring, tenant_id=tenant_id, only_global=only_global)

    if client_id is not None and only_global:
        raise click.UsageError("--client-id and --global exclude each other")
    try:
        result = _run(work)
    except errors.NotFound as exc:  # pragma: no cover - run_with_session already maps it
        raise click.ClickException(exc.description) from None
    if as_json:
        body = {"ok": result.ok, **asdict(result)}
        click.echo(json.dumps(body, default=str))
    else:
        click.echo(f"{result.chains} chain(s), {result.rows} sealed event(s), {result.unsealed} not yet sealed")
        for problem in result.problems:
            owner = f"tenant {problem.tenant}" if problem.tenant else f"chain {problem.chain}"
            click.echo(f"TAMPERED {owner}: {problem.kind}: {problem.detail}")
        click.echo("ok: no tampering found" if result.ok else f"{len(result.problems)} problem(s) found")
    if not result.ok:
        raise SystemExit(1)
