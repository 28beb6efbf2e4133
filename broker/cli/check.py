"""``broker check``: the database integrity check (see :mod:`broker.integrity.service`)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

import click

from broker.integrity import service

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing
    from broker.settings import Settings


@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def check(as_json: bool) -> None:
    """Check the database's integrity: lineage, half-written grants, orphan tokens, rotation, ciphertexts.

    Prints every finding; exits 1 when there is any, 0 when the database is clean.
    """
    from broker.cli.main import run_with_session  # noqa: PLC0415 - main imports this module

    async def work(session: AsyncSession, ring: KeyRing, _: Settings) -> service.Report:
        async with session.begin():
            return await service.check(session, ring)

    report: service.Report = run_with_session(work)
    if as_json:
        click.echo(json.dumps(asdict(report) | {"clean": report.clean}))
    else:
        for finding in report.findings:
            click.echo(f"{finding.rule}: {finding.count} row(s), e.g. {', '.join(finding.sample)}")
        verdict = "clean" if report.clean else f"{len(report.findings)} problem(s) found"
        opened = report.sealed_values_opened
        click.echo(f"broker check: {report.rules_checked} checks, {opened} sealed values opened: {verdict}")
    if not report.clean:
        sys.exit(1)
