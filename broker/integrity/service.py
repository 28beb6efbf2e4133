"""``broker check``: an integrity check of the database, for after a crash, a restore or a hand edit.

What it proves (each a rule in :mod:`broker.integrity.repository`, plus the ciphertext scan here):
    * lineage: every grant's parent and every ancestor in its ``path`` exist, the path is its parent's
      path plus the parent, and a child belongs to its parent's tenant;
    * no half-written grant: every grant has its first token pair, every multi-party grant its parties,
      and only multi-party grants have parties;
    * no orphan token: every token's grant exists and belongs to the token's tenant;
    * rotation: a rotated refresh token names a successor that exists and points back at it, no token
      has two successors, and shared multi-party tokens never rotate;
    * every sealed value (refresh tokens, retry pairs, user tokens, identity) opens under its key and
      the AAD of its own row. Values under a shredded data key, or overwritten by shredding, are gone
      on purpose and not reported.

Read-only, and safe on a live database: every statement is a plain ``SELECT`` (short transactions,
one page of sealed rows at a time).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from broker.crypto import envelope
from broker.crypto.envelope import EnvelopeError
from broker.integrity import repository
from broker.keys import sealing
from broker.keys.columns import TENANT_DATA

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing

SAMPLE = 10
BATCH = 500
SHREDDED_PLACEHOLDER = "shredded"


@dataclass
class Finding:
    """One broken rule: how many rows break it and a few of their ids."""

    rule: str
    count: int
    sample: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Every finding, and how many sealed values were opened."""

    findings: list[Finding]
    rules_checked: int
    sealed_values_opened: int

    @property
    def clean(self) -> bool:
        """No rule is broken."""
        return not self.findings


async def _unreadable(session: AsyncSession, ring: KeyRing) -> tuple[list[Finding], int]:
    shredded = await repository.shredded_key_ids(session)
    findings: list[Finding] = []
    opened = 0
    for table in TENANT_DATA:
        names = [c.column for c in table.columns]
        bad: dict[str, list[str]] = {c.column: [] for c in table.columns}
        after = None
        while True:
            rows = await repository.sealed_batch(session, table.name, names, after, BATCH)
            if not rows:
                break
            after = rows[-1][0]
            for row in rows:
                row_id, tenant_id, *values = tuple(row)
                for column, value in zip(table.columns, values, strict=True):
                    if value is None or value == SHREDDED_PLACEHOLDER:
                        continue
                    if envelope.version_of(value) == envelope.DATA_KEY_VERSION and _key_of(value) in shredded:
                        continue
                    aad = envelope.aad_for(table.name, column.aad_column, tenant_id, row_id)
                    try:
                        await sealing.open_(session, ring, value, aad)
                        opened += 1
                    except EnvelopeError:
                        bad[column.column].append(str(row_id))
        findings += [
            Finding(f"unreadable_ciphertext:{table.name}.{column}", len(ids), ids[:SAMPLE])
            for column, ids in bad.items()
            if ids
        ]
    return findings, opened


def _key_of(value: str) -> str:
    try:
        return str(uuid.UUID(envelope.key_id_of(value)))
    except (EnvelopeError, ValueError):
        return ""


async def check(session: AsyncSession, ring: KeyRing) -> Report:
    """Run every rule and the ciphertext scan on ``session`` (read-only). The caller owns the transaction."""
    findings: list[Finding] = []
    for rule in repository.RULES:
        count, sample = await repository.offenders(session, rule, SAMPLE)
        if count:
            findings.append(Finding(rule, count, sample))
    unreadable, opened = await _unreadable(session, ring)
    return Report(findings + unreadable, len(repository.RULES) + 1, opened)
