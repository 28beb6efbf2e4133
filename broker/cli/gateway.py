"""``broker tenants set-upstream|show-upstream|remove-upstream``: gateway mode from the command line."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from broker.gateway import upstreams

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing
    from broker.settings import Settings

CLI_ACTOR = "cli"


def _print(view: upstreams.UpstreamView, as_json: bool) -> None:
    data = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in asdict(view).items()}
    if as_json:
        click.echo(json.dumps(data))
        return
    for key, value in data.items():
        click.echo(f"{key + ':':<20}{value}")


@click.command("set-upstream")
@click.argument("client_id")
@click.option("--base-url", required=True, help="The upstream, e.g. https://sandbox.plaid.com.")
@click.option("--upstream-client-id", required=True, help="The tenant's client_id at the upstream.")
@click.option(
    "--upstream-secret",
    envvar="BROKER_UPSTREAM_SECRET",
    prompt=True,
    hide_input=True,
    help="The tenant's secret at the upstream (prompted for, or from BROKER_UPSTREAM_SECRET; never echoed).",
)
@click.option("--mode", type=click.Choice(["held", "transparent"]), default="held", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def set_upstream(  # noqa: PLR0917 - click passes options positionally
    client_id: str, base_url: str, upstream_client_id: str, upstream_secret: str, mode: str, as_json: bool
) -> None:
    """Put a tenant in gateway mode: its token and user requests go to BASE_URL with these credentials."""
    from broker.cli.main import run_with_session  # noqa: PLC0415 - main imports this module

    spec = upstreams.UpstreamSpec(base_url=base_url, client_id=upstream_client_id, secret=upstream_secret, mode=mode)

    async def work(session: AsyncSession, ring: KeyRing, settings: Settings) -> upstreams.UpstreamView:
        async with session.begin():
            return await upstreams.set_upstream(
                session, ring, settings, client_id, spec, actor=CLI_ACTOR, request_id=None
            )

    _print(run_with_session(work), as_json)


@click.command("show-upstream")
@click.argument("client_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_upstream(client_id: str, as_json: bool) -> None:
    """Show a tenant's upstream (never its secret: a keyed fingerprint of it)."""
    from broker.cli.main import run_with_session  # noqa: PLC0415

    async def work(session: AsyncSession, ring: KeyRing, _: Settings) -> upstreams.UpstreamView:
        async with session.begin():
            return await upstreams.get_upstream(session, ring, client_id)

    _print(run_with_session(work), as_json)


@click.command("remove-upstream")
@click.argument("client_id")
def remove_upstream(client_id: str) -> None:
    """Return a tenant to issuer mode (grants obtained through the gateway can no longer be refreshed)."""
    from broker.cli.main import run_with_session  # noqa: PLC0415

    async def work(session: AsyncSession, _ring: KeyRing, _: Settings) -> None:
        async with session.begin():
            await upstreams.delete_upstream(session, client_id, actor=CLI_ACTOR, request_id=None)

    run_with_session(work)
    click.echo(f"{client_id} is back in issuer mode")
