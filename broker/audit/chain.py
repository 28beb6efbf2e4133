"""Per-tenant hash chains over audit events: sealed after the fact, verified by ``broker audit verify``.

Each tenant's events (and, separately, the events of no tenant) form one chain. Sealing gives the next
unsealed events of a chain, in id order, consecutive ``seq`` numbers and
``hash = HMAC-SHA-256(chain key, previous hash || canonical event)``; the chain's head (last ``seq``
and ``hash``) is kept in ``audit_chains``. The chain key is derived from the server hash key, which
is configuration, not data: someone who can write the database but does not hold the key cannot
recompute hashes, so an edited row no longer matches its hash and a deleted row breaks the link to
its successor (or, at the end of a chain, disagrees with the head).

Trade-off: inserting an event never touches the chain, so token issuance never serialises on a
per-tenant lock or pays a round trip for it. Sealing runs in the background of every serving
process (every ``BROKER_AUDIT_SEAL_INTERVAL_SECONDS``), on ``broker audit seal``, and before
``broker audit verify``. Events not yet sealed (normally a few seconds' worth) are not yet
tamper-evident. Truncating a chain *and* rewinding its head to an earlier row is not detectable from
the database alone; every seal logs the head (``audit chain sealed``), so logs kept elsewhere anchor it.

Sealers cooperate: a chain's head row is locked ``FOR UPDATE SKIP LOCKED``, so two replicas never
extend one chain at once and never wait on each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any

import structlog

from broker.audit import repository
from broker.db.models.audit import GLOBAL_CHAIN

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.crypto.keyring import KeyRing

log = structlog.get_logger("broker.audit")

SEAL_BATCH = 1000
VERIFY_BATCH = 5000
CHAINS_PER_ROUND = 100
YIELD_EVERY = 50
"""Sealing runs in serving processes: it hands the event loop back after this many links (about 2 ms of
CPU here), so a batch never stalls the requests in flight for tens of milliseconds."""
_LABEL = b"broker audit chain v1"


def chain_key(ring: KeyRing) -> bytes:
    """The HMAC key of every audit chain, derived from the hash key."""
    return hmac.new(ring.hash_key, _LABEL, hashlib.sha256).digest()


def canonical(seq: int, event: Any) -> bytes:  # noqa: ANN401 - an audit_events row
    """The bytes an event's hash covers: every column but the chain's own, in a fixed form."""
    body = [
        seq,
        event.id,
        str(event.tenant_id) if event.tenant_id is not None else None,
        event.occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
        event.request_id,
        event.actor,
        event.action,
        event.outcome,
        str(event.grant_id) if event.grant_id is not None else None,
        event.user_id,
        event.detail,
    ]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def link(key: bytes, previous: bytes | None, seq: int, event: Any) -> bytes:  # noqa: ANN401
    """The hash of ``event`` at position ``seq`` after a row whose hash is ``previous``."""
    return hmac.new(key, (previous or b"") + canonical(seq, event), hashlib.sha256).digest()


def chain_id_of(tenant_id: uuid.UUID | None) -> uuid.UUID:
    """The chain an event of ``tenant_id`` belongs to."""
    return tenant_id if tenant_id is not None else GLOBAL_CHAIN


async def seal_pending(session: AsyncSession, ring: KeyRing, *, batch: int = SEAL_BATCH, wait: bool = False) -> int:
    """Seal every unsealed event (one short transaction per chain and batch); return how many.

    Chains another sealer is extending are skipped; that sealer seals them. That suits the background
    sealers, which must never queue behind each other, but not ``broker audit seal`` and ``verify``: when
    they return, every event written before they started must be sealed, even one a background sealer
    had locked and not yet committed. They pass ``wait``, and wait for that sealer's short transaction.
    """
    key = chain_key(ring)
    total = 0
    while True:
        async with session.begin():
            chains = await repository.chains_with_unsealed(session, CHAINS_PER_ROUND)
        progressed = 0
        for tenant_id in chains:
            async with session.begin():
                progressed += await _seal_chain(session, key, tenant_id, batch, wait=wait)
        total += progressed
        if progressed == 0:
            return total


async def _seal_chain(session: AsyncSession, key: bytes, tenant_id: uuid.UUID | None, batch: int, *, wait: bool) -> int:
    chain = chain_id_of(tenant_id)
    head = await repository.lock_head(session, chain, wait=wait)
    if head is None:
        return 0
    events = await repository.unsealed(session, tenant_id, batch)
    seq, previous = head.seq, head.hash
    links: list[tuple[int, int, bytes]] = []
    for n, event in enumerate(events, 1):
        seq += 1
        previous = link(key, previous, seq, event)
        links.append((event.id, seq, previous))
        if n % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # let the requests this process serves run between slices
    if links:
        await repository.store_links(session, links)
        await repository.move_head(session, chain, seq, previous)
        log.info("audit chain sealed", chain=str(chain), seq=seq, hash=previous.hex() if previous else None)
    return len(links)


@dataclass(frozen=True)
class Problem:
    """Evidence of tampering in one chain."""

    chain: uuid.UUID
    kind: str
    """``edited`` (a row no longer matches its hash), ``deleted`` (a gap, or a broken link), or ``head``
    (the chain ends before or after its recorded head)."""
    seq: int | None
    event_id: int | None
    detail: str
    tenant: str | None = None
    """The chain's tenant (its client id), None for the global chain."""


@dataclass
class Verification:
    """What ``broker audit verify`` found."""

    chains: int = 0
    rows: int = 0
    unsealed: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no chain shows tampering."""
        return not self.problems


async def verify(
    session: AsyncSession, ring: KeyRing, *, tenant_id: uuid.UUID | None = None, only_global: bool = False
) -> Verification:
    """Recompute every sealed chain (or one tenant's, or the global one) and report tampering.

    Reads in batches, each its own short transaction. Rows sealed while verification runs are checked
    if the walk reaches them; the head comparison uses the head as read at the start.
    """
    key = chain_key(ring)
    result = Verification()
    async with session.begin():
        if tenant_id is not None or only_global:
            chain = chain_id_of(tenant_id)
            head_row = await repository.head(session, chain)
            heads = [(chain, head_row.seq, head_row.hash)] if head_row is not None else []
        else:
            heads = [(h.chain_id, h.seq, h.hash) for h in await repository.heads(session)]
        result.unsealed = await repository.count_unsealed(
            session, tenant_id, scoped=tenant_id is not None or only_global
        )
    for chain, head_seq, head_hash in heads:
        result.chains += 1
        await _verify_chain(session, key, chain, (head_seq, head_hash), result)
    if result.problems:
        async with session.begin():
            names = await repository.client_ids(session, [p.chain for p in result.problems])
        result.problems = [
            dataclasses.replace(p, tenant=names[p.chain][0] if p.chain in names else None) for p in result.problems
        ]
    return result


async def _verify_chain(
    session: AsyncSession, key: bytes, chain: uuid.UUID, recorded: tuple[int, bytes | None], result: Verification
) -> None:
    head_seq, head_hash = recorded
    tenant_id = None if chain == GLOBAL_CHAIN else chain
    expected_seq, previous = 1, None
    last_seq, last_hash = 0, None
    while True:
        async with session.begin():
            events = await repository.sealed_after(session, tenant_id, last_seq, VERIFY_BATCH)
        if not events:
            break
        for event in events:
            result.rows += 1
            if event.seq != expected_seq:
                # A gap: rows were deleted. This row's link cannot be checked (its predecessor is gone).
                missing = f"seq {expected_seq}..{event.seq - 1} missing before event {event.id}"
                result.problems.append(Problem(chain, "deleted", expected_seq, None, missing))
            elif link(key, previous, event.seq, event) != event.hash:
                # The row (or its predecessor's hash) was changed, or a deletion was renumbered over.
                changed = f"event {event.id} does not match its hash"
                result.problems.append(Problem(chain, "edited", event.seq, event.id, changed))
            previous, expected_seq = event.hash, event.seq + 1
            last_seq, last_hash = event.seq, event.hash
    if last_seq != head_seq or last_hash != head_hash:
        detail = f"the chain ends at {last_seq} but its head says {head_seq}"
        kind = "deleted" if last_seq < head_seq else "head"
        result.problems.append(Problem(chain, kind, head_seq, None, detail))


@contextlib.asynccontextmanager
async def sealing(runtime: Runtime) -> AsyncIterator[None]:
    """Seal audit events in the background every ``audit_seal_interval_seconds`` while the block runs."""
    interval = runtime.settings.audit_seal_interval_seconds
    if interval <= 0:
        yield
        return
    task = asyncio.create_task(_seal_forever(runtime, interval), name="audit-sealer")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _seal_forever(runtime: Runtime, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            async with runtime.sessions() as session:
                await seal_pending(session, runtime.ring)
        except Exception as exc:  # noqa: BLE001 - keep sealing after a database outage
            log.warning("audit sealing failed; will retry", error=type(exc).__name__)
