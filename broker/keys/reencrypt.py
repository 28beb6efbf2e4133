"""Online re-encryption: rewrap every data key under the active ring key, and move ``v1`` rows to ``v2``.

Invariants:
    * Each batch is one short transaction that locks its rows ``FOR UPDATE SKIP LOCKED``: live traffic
      (which locks the rows it rotates or updates) and another re-encryption (a second replica) are
      never blocked for long, never blocked on, and never overwritten; rows locked elsewhere are taken
      on a later pass.
    * Progress is the database itself: a batch either commits whole or not at all, so a killed run
      leaves every row readable (old or new form) and a new run simply continues with what is left.
    * A run ends only when nothing is left, including rows another process held locked when we passed
      them (it waits for them); rows that cannot be opened at all are reported, not retried forever.
    * Rotation is cheap where it can be: a ring key change rewraps one data key per tenant, never the
      rows sealed under it. Only ``v1`` rows (from before data keys) are rewritten, once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker.crypto import datakeys, envelope
from broker.crypto.envelope import EnvelopeError
from broker.keys import repository, sealing
from broker.keys.columns import TENANT_DATA, SealedTable
from broker.webhooks import service as webhooks

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable

    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing

DEFAULT_BATCH = 1000
WAIT_FOR_OTHERS = 0.2


@dataclass
class ReencryptResult:
    """What one run did."""

    data_keys: int = 0
    rows: int = 0
    seconds: float = 0.0
    unreadable: list[str] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        """Rows (data keys and rows) per second of wall time."""
        return (self.data_keys + self.rows) / self.seconds if self.seconds > 0 else 0.0


async def pending(session: AsyncSession, ring: KeyRing) -> int:
    """How many data keys and ``v1`` rows are left to move (one indexed count each)."""
    async with session.begin():
        total = await repository.count_keys_to_rewrap(session, ring.active_kid)
        for table in TENANT_DATA:
            total += await repository.count_v1_rows(session, table)
        total += await _secrets_left(session, ring)
    return total


async def _secrets_left(session: AsyncSession, ring: KeyRing) -> int:
    usage = await webhooks.secret_key_usage(session)
    return sum(n for kid, n in usage.items() if kid != ring.active_kid)


async def reencrypt(
    session: AsyncSession,
    ring: KeyRing,
    *,
    batch_size: int = DEFAULT_BATCH,
    pause: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> ReencryptResult:
    """Move everything to the ring's active key (see the module invariants).

    Args:
        session: A session with no transaction in progress; each batch runs its own.
        ring: The ring; its active key wraps the data keys, and it must hold every key still in use.
        batch_size: Rows per transaction.
        pause: Seconds to sleep between batches (throttle on a busy primary).
        progress: Called with the number of rows each committed batch moved.

    Raises:
        EnvelopeError: a data key could not be unwrapped (its ring key is missing from ``ring``).
    """
    run = _Run(session, ring, batch_size, pause, progress or (lambda _: None))
    started = time.monotonic()
    await run.rewrap_data_keys()
    for table in TENANT_DATA:
        await run.move_v1_rows(table)
    await run.reseal_operator_secrets()
    run.result.seconds = time.monotonic() - started
    return run.result


class _Run:
    """One re-encryption run's parameters and tally."""

    def __init__(
        self, session: AsyncSession, ring: KeyRing, batch_size: int, pause: float, tick: Callable[[int], None]
    ) -> None:
        self.session, self.ring, self.batch_size, self.pause, self.tick = session, ring, batch_size, pause, tick
        self.result = ReencryptResult()

    async def rewrap_data_keys(self) -> None:
        session, ring = self.session, self.ring
        after: uuid.UUID | None = None
        while True:
            async with session.begin():
                rows = await repository.claim_keys_to_rewrap(session, ring.active_kid, after, self.batch_size)
                rewrapped = []
                for row in rows:
                    key = datakeys.unwrap(ring, row.tenant_id, row.id, row.wrapped)
                    rewrapped.append((row.id, datakeys.wrap(ring, row.tenant_id, row.id, key.key)))
                await repository.set_wrapped(session, rewrapped)
            self.result.data_keys += len(rows)
            self.tick(len(rows))
            if rows:
                after = rows[-1].id
                await asyncio.sleep(self.pause)
                continue
            # End of a pass: anything left was locked by someone else (live traffic or another replica).
            async with session.begin():
                left = await repository.count_keys_to_rewrap(session, ring.active_kid)
            if left == 0:
                return
            after = None
            await asyncio.sleep(WAIT_FOR_OTHERS)

    async def reseal_operator_secrets(self) -> None:
        """Webhook signing secrets stay sealed under the ring: reseal them under the active key."""
        while True:
            async with self.session.begin():
                moved = await webhooks.reencrypt_secrets(self.session, self.ring, batch=self.batch_size)
            self.result.rows += moved
            self.tick(moved)
            if moved:
                await asyncio.sleep(self.pause)
                continue
            async with self.session.begin():
                left = await _secrets_left(self.session, self.ring)
            if left == 0:
                return
            await asyncio.sleep(WAIT_FOR_OTHERS)

    async def move_v1_rows(self, table: SealedTable) -> None:
        session, ring = self.session, self.ring
        after: uuid.UUID | None = None
        broken: set[uuid.UUID] = set()
        while True:
            async with session.begin():
                rows = await repository.claim_v1_rows(session, table, after, self.batch_size)
                moved = 0
                writes: dict[str, list[tuple[uuid.UUID, str]]] = {c.column: [] for c in table.columns}
                for row in rows:
                    resealed = await _reseal_row(session, ring, table, row)
                    if resealed is None:
                        if row.id not in broken:
                            broken.add(row.id)
                            self.result.unreadable.append(f"{table.name} {row.id}")
                        continue
                    moved += 1
                    for column_name, sealed in resealed:
                        writes[column_name].append((row.id, sealed))
                for column_name, values in writes.items():
                    await repository.store_rows(session, table, column_name, values)
            self.result.rows += moved
            self.tick(moved)
            if rows:
                after = rows[-1].id
                await asyncio.sleep(self.pause)
                continue
            async with session.begin():
                left = await repository.count_v1_rows(session, table)
            if left <= len(broken):
                return
            after = None
            await asyncio.sleep(WAIT_FOR_OTHERS)


async def _reseal_row(
    session: AsyncSession,
    ring: KeyRing,
    table: SealedTable,
    row: Any,  # noqa: ANN401 - a result row of the table's columns
) -> list[tuple[str, str]] | None:
    """One row's ``v1`` values re-sealed under its tenant's data key; None if one does not open."""
    mapping = row._mapping  # noqa: SLF001 - SQLAlchemy's public row mapping
    resealed: list[tuple[str, str]] = []
    for column in table.columns:
        value = mapping[column.column]
        if value is None or envelope.version_of(value) != envelope.VERSION:
            continue
        aad = envelope.aad_for(table.name, column.aad_column, row.tenant_id, row.id)
        try:
            plaintext = envelope.open_(ring, value, aad)
        except EnvelopeError:
            return None
        resealed.append((column.column, await sealing.seal(session, ring, row.tenant_id, plaintext, aad)))
    return resealed
