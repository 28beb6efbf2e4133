"""Per-tenant hash chains over audit events: sealed after the fact, verified by ``broker audit verify``.

Each tenant's events (and, separately, the events of no tenant) form one chain of blocks. A sealing
round takes the events written by transactions that have ended, past the seal mark, in the order of
the transaction that wrote them and then of id, and appends one block per chain:
``digest = HMAC-SHA-256(chain key, canonical event)[:16]`` for each event, and
``hash = HMAC-SHA-256(chain key, previous hash || chain || seq || event ids || digests)``. The chain's
head (its block count and last hash) is kept in ``audit_chains``. The chain key is derived from the
server hash key, which is configuration, not data: someone who can write the database but does not hold
the key cannot recompute digests or hashes, so an edited row no longer matches its digest, a deleted row
is missing from its block, and a deleted block breaks the link to its successor (or, at the end of a
chain, disagrees with the head).

Trade-offs:

* Inserting an event never touches the chain, so token issuance never serialises on a per-tenant lock
  or pays a round trip for it; and sealing never updates an event (it used to write ``seq`` and
  ``hash`` into every row: a non-HOT UPDATE of a wide, seven-index row, about as much write work again as
  the insert). A round writes one block row per chain, whatever the number of events.
* Sealing runs in the background of every serving process (every ``BROKER_AUDIT_SEAL_INTERVAL_SECONDS``),
  on ``broker audit seal``, and before ``broker audit verify``. Events not yet sealed (normally a second's
  worth) are not yet tamper-evident. A transaction that writes to the database and stays open holds
  sealing back until it ends (sealing only takes events whose transaction has ended, so none is skipped).
* Truncating a chain *and* rewinding its head to an earlier block is not detectable from the database
  alone; every seal logs the head (``audit chain sealed``), so logs kept elsewhere anchor it.

Sealers take turns on the one-row seal mark: a background sealer that finds it locked skips its round
(``FOR UPDATE SKIP LOCKED``); ``broker audit seal`` and ``verify`` wait for it.

Events sealed one by one before blocks (``seq`` and ``hash`` on the row) are verified as before, and a
chain's first block links to the last of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import struct
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

SEAL_BATCH = 2000
BACKGROUND_BATCH = 250
"""Serving processes seal in rounds this small: reading a round's events is one uninterrupted slice of CPU
(a few milliseconds here at 250), and the requests in flight wait for it."""
VERIFY_BATCH = 5000
VERIFY_BLOCKS = 20
DIGEST_SIZE = 16
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


def digest(key: bytes, event: Any) -> bytes:  # noqa: ANN401 - an audit_events row
    """An event's own digest in its block (128 bits: enough to make a forged row infeasible)."""
    return hmac.new(key, canonical(0, event), hashlib.sha256).digest()[:DIGEST_SIZE]


def block_link(
    key: bytes, previous: bytes | None, chain: uuid.UUID, seq: int, *, event_ids: list[int], digests: bytes
) -> bytes:
    """The hash of block ``seq`` of ``chain`` after a block (or row) whose hash is ``previous``."""
    mac = hmac.new(key, previous or b"", hashlib.sha256)
    mac.update(chain.bytes + struct.pack(">QQ", seq, len(event_ids)))
    mac.update(struct.pack(f">{len(event_ids)}q", *event_ids))
    mac.update(digests)
    return mac.digest()


async def seal_pending(session: AsyncSession, ring: KeyRing, *, batch: int = SEAL_BATCH, wait: bool = False) -> int:
    """Seal every event of a transaction that has ended (one short transaction per batch); return how many.

    If another sealer holds the seal mark, a background sealer (``wait`` false) returns at once: that
    sealer seals the events. ``broker audit seal`` and ``verify`` pass ``wait``: when they return, every
    event written before they started is sealed.
    """
    key = chain_key(ring)
    total = 0
    while True:
        async with session.begin():
            sealed = await _seal_round(session, key, batch, wait=wait)
        total += sealed
        if sealed < batch:
            return total


async def _seal_round(session: AsyncSession, key: bytes, batch: int, *, wait: bool) -> int:
    mark = await repository.lock_mark(session, wait=wait)
    if mark is None:
        return 0
    before = await repository.horizon(session)  # after taking the mark: this transaction has an id now
    events = await repository.to_seal(session, (mark.xact, mark.event_id), before, batch)
    if not events:
        return 0
    chains: dict[uuid.UUID, list[Any]] = {}
    for event in events:
        chains.setdefault(chain_id_of(event.tenant_id), []).append(event)
    heads = await repository.lock_heads(session, list(chains))
    n = 0
    for chain, members in sorted(chains.items()):
        head = heads[chain]
        digests = bytearray()
        for event in members:
            digests += digest(key, event)
            n += 1
            if n % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # let the requests this process serves run between slices
        seq = head.blocks + 1
        previous = head.block_hash if head.blocks else head.hash
        ids = [event.id for event in members]
        sealed = block_link(key, previous, chain, seq, event_ids=ids, digests=bytes(digests))
        await repository.append_block(session, chain, seq, event_ids=ids, digests=bytes(digests), digest=sealed)
        log.info("audit chain sealed", chain=str(chain), block=seq, events=len(ids), hash=sealed.hex())
    await repository.move_mark(session, events[-1].xact, events[-1].id)
    return len(events)


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
            heads = [head_row] if head_row is not None else []
        else:
            heads = list(await repository.heads(session))
        result.unsealed = await repository.count_unsealed(
            session, tenant_id, scoped=tenant_id is not None or only_global
        )
    for head in heads:
        result.chains += 1
        last = await _verify_rows(session, key, head.chain_id, (head.seq, head.hash), result)
        await _verify_blocks(session, key, head.chain_id, last, recorded=(head.blocks, head.block_hash), result=result)
    if result.problems:
        async with session.begin():
            names = await repository.client_ids(session, [p.chain for p in result.problems])
        result.problems = [
            dataclasses.replace(p, tenant=names[p.chain][0] if p.chain in names else None) for p in result.problems
        ]
    return result


async def _verify_rows(
    session: AsyncSession, key: bytes, chain: uuid.UUID, recorded: tuple[int, bytes | None], result: Verification
) -> bytes | None:
    """Check the chain's rows sealed one by one (before blocks); return the last one's hash."""
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
    return last_hash


async def _verify_blocks(
    session: AsyncSession,
    key: bytes,
    chain: uuid.UUID,
    previous: bytes | None,
    *,
    recorded: tuple[int, bytes | None],
    result: Verification,
) -> None:
    """Check the chain's blocks: each one's link, and each listed event against its digest."""
    head_blocks, head_hash = recorded
    last_seq, last_hash = 0, None
    while True:
        async with session.begin():
            blocks = await repository.blocks_after(session, chain, last_seq, VERIFY_BLOCKS)
            events = await repository.events_by_id(session, [i for b in blocks for i in b.event_ids])
        if not blocks:
            break
        for block in blocks:
            if block.seq != last_seq + 1:
                missing = f"block {last_seq + 1}..{block.seq - 1} missing before block {block.seq}"
                result.problems.append(Problem(chain, "deleted", last_seq + 1, None, missing))
            elif (
                block_link(key, previous, chain, block.seq, event_ids=block.event_ids, digests=block.digests)
                != block.hash
            ):
                changed = f"block {block.seq} does not match its hash"
                result.problems.append(Problem(chain, "edited", block.seq, None, changed))
            for i, event_id in enumerate(block.event_ids):
                result.rows += 1
                event = events.get(event_id)
                if event is None:
                    gone = f"event {event_id} of block {block.seq} is missing"
                    result.problems.append(Problem(chain, "deleted", block.seq, event_id, gone))
                elif digest(key, event) != block.digests[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE]:
                    changed = f"event {event_id} does not match its hash"
                    result.problems.append(Problem(chain, "edited", block.seq, event_id, changed))
            previous, last_seq, last_hash = block.hash, block.seq, block.hash
    if last_seq != head_blocks or last_hash != head_hash:
        detail = f"the chain ends at block {last_seq} but its head says {head_blocks}"
        kind = "deleted" if last_seq < head_blocks else "head"
        result.problems.append(Problem(chain, kind, head_blocks, None, detail))


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
                await seal_pending(session, runtime.ring, batch=BACKGROUND_BATCH)
        except Exception as exc:  # noqa: BLE001 - keep sealing after a database outage
            log.warning("audit sealing failed; will retry", error=type(exc).__name__)
