"""The upstream call outbox: revocations and user removals forwarded upstream until the upstream confirms.

A revocation (or ``/user/remove``) of a gateway tenant takes effect locally at once, and in the same
transaction queues the upstream call here (:func:`enqueue`). After commit the request tries the call
once (:func:`attempt`); if the upstream is down, slow or failing, the call stays queued and a worker in
every ``serve`` process retries it with backoff until it succeeds (:func:`run_once`, :func:`running`).

Invariants:
    * Nothing is lost: the call commits with the local change it mirrors, or not at all.
    * Nothing is left live upstream by giving up: a call is completed only when the upstream confirmed it
      (2xx) or answered a definitive refusal that no retry can change (a 4xx other than 401, 403, 408,
      429 and ``INVALID_API_KEYS``; say ``USER_NOT_FOUND``: nothing left to remove). Bad credentials are
      retried: the operator can fix them.
    * Claims use ``FOR UPDATE SKIP LOCKED`` in a short transaction that pushes the call's next attempt past
      a lease; no session is open during the HTTP call (as in :mod:`broker.webhooks.delivery`).
    * The payload (the token or the user id) is sealed under the tenant's data key; it is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from broker import errors
from broker.audit import service as audit
from broker.crypto import envelope
from broker.crypto.envelope import EnvelopeError
from broker.gateway import repository, upstreams
from broker.keys import sealing
from broker.observability import metrics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.engine import Row
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.crypto.keyring import KeyRing
    from broker.gateway.client import Reply, Upstream

log = structlog.get_logger("broker.gateway")

PATHS = {"revoke": "/oauth/revoke", "user_remove": "/user/remove"}
RETRYABLE_STATUSES = frozenset({401, 403, 408, 429})
CLAIM_BATCH = 50


def payload_aad(tenant_id: uuid.UUID, call_id: uuid.UUID) -> bytes:
    """The AAD of a call's sealed payload: bound to the row and its tenant."""
    return envelope.aad_for("upstream_calls", "payload", tenant_id, call_id)


async def enqueue(
    session: AsyncSession,
    ring: KeyRing,
    *,
    tenant_id: uuid.UUID,
    operation: str,
    payload: dict[str, Any],
    request_id: str | None,
) -> uuid.UUID:
    """Queue an upstream call in the caller's transaction; return its id (for :func:`attempt`)."""
    call_id = uuid.uuid4()
    sealed = await sealing.seal(session, ring, tenant_id, json.dumps(payload).encode(), payload_aad(tenant_id, call_id))
    await repository.insert_call(
        session,
        {
            "id": call_id,
            "tenant_id": tenant_id,
            "operation": operation,
            "payload_enc": sealed,
            "request_id": request_id,
        },
    )
    return call_id


def _lease_seconds(runtime: Runtime) -> float:
    settings = runtime.settings
    return (settings.upstream_timeout_seconds + settings.upstream_connect_timeout_seconds) * (
        1 + settings.upstream_retries
    ) + 5


def backoff(runtime: Runtime, attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failures: exponential, capped."""
    settings = runtime.settings
    return float(
        min(settings.upstream_backoff_max_seconds, settings.upstream_backoff_base_seconds * 2 ** max(0, attempts - 1))
    )


def definitive(reply: Reply) -> bool:
    """Whether an upstream answer settles the call (see the module invariants)."""
    if reply.ok:
        return True
    if reply.status in RETRYABLE_STATUSES:
        return False
    return reply.body.get("error_code") != "INVALID_API_KEYS" and reply.body.get("error") != "invalid_client"


async def attempt(runtime: Runtime, call_id: uuid.UUID) -> Reply | None:
    """Try one queued call now (after the commit that queued it); its reply, or None if it failed or was taken."""
    # One try, no retry after the request was sent: the caller is waiting, and the worker retries.
    replies = await _run(runtime, now=datetime.now(UTC), call_id=call_id, limit=1, safe=False)
    return replies[0] if replies else None


async def run_once(runtime: Runtime, *, now: datetime | None = None, limit: int = CLAIM_BATCH) -> int:
    """Claim the calls due at ``now`` and try each once; return how many were claimed."""
    claimed: list[Any] = []
    await _run(runtime, now=now or datetime.now(UTC), limit=limit, claimed=claimed)
    return len(claimed)


async def _run(
    runtime: Runtime,
    *,
    now: datetime,
    limit: int,
    call_id: uuid.UUID | None = None,
    claimed: list[Any] | None = None,
    safe: bool = True,
) -> list[Reply]:
    async with runtime.sessions() as session, session.begin():
        rows = await repository.claim_calls(
            session, now=now, lease_seconds=_lease_seconds(runtime), limit=limit, call_id=call_id
        )
        jobs = []
        for row in rows:
            upstream = await upstreams.open_upstream(session, runtime.ring, row.tenant_id)
            try:
                payload = json.loads(
                    await sealing.open_(session, runtime.ring, row.payload_enc, payload_aad(row.tenant_id, row.id))
                )
            except EnvelopeError:
                payload = None
            jobs.append((row, upstream, payload))
    if claimed is not None:
        claimed.extend(rows)
    results = await asyncio.gather(*(_call(runtime, *job, safe=safe) for job in jobs))
    async with runtime.sessions() as session, session.begin():
        for (row, _, _), (reply, error) in zip(jobs, results, strict=True):
            await _finish(session, runtime, row, reply, error)
    return [reply for reply, _ in results if reply is not None]


async def _call(
    runtime: Runtime,
    row: Row[Any],
    upstream: Upstream | None,
    payload: dict[str, Any] | None,
    *,
    safe: bool,
) -> tuple[Reply | None, str | None]:
    if upstream is None:
        return None, "the tenant has no upstream (or its secret is unreadable)"
    if payload is None:
        return None, "the payload is unreadable (its data key was shredded)"
    try:
        return await runtime.upstreams.post(upstream, PATHS[row.operation], payload, safe=safe), None
    except errors.UpstreamError as exc:
        return None, exc.debug or exc.description


async def _finish(
    session: AsyncSession,
    runtime: Runtime,
    row: Row[Any],
    reply: Reply | None,
    error: str | None,
) -> None:
    now = datetime.now(UTC)
    if reply is not None and definitive(reply):
        metrics.UPSTREAM_CALLS.inc(row.operation, "completed")
        await repository.finish_call(
            session, row.id, completed_at=now, next_attempt_at=None, status=reply.status, error=None
        )
        await audit.record(
            session,
            action=f"upstream.{row.operation}",
            actor="gateway",
            tenant_id=row.tenant_id,
            request_id=row.request_id,
            outcome="success" if reply.ok else "denied",
            detail={"attempts": row.attempts, "status": reply.status, "upstream_request_id": reply.request_id},
        )
        return
    status = reply.status if reply is not None else None
    metrics.UPSTREAM_CALLS.inc(row.operation, "retry")
    delay = backoff(runtime, row.attempts)
    log.info(
        "upstream call will be retried", operation=row.operation, attempts=row.attempts, status=status, error=error
    )
    await repository.finish_call(
        session,
        row.id,
        completed_at=None,
        next_attempt_at=now + timedelta(seconds=delay),
        status=status,
        error=(error or f"upstream answered {status}")[:500],
    )


async def _loop(runtime: Runtime, stop: asyncio.Event) -> None:
    poll = runtime.settings.upstream_poll_seconds
    while not stop.is_set():
        try:
            claimed = await run_once(runtime)
        except Exception:
            log.warning("upstream call worker pass failed", exc_info=True)
            claimed = 0
        if claimed:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=poll)


@contextlib.asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[None]:
    """Retry queued upstream calls in the background for the block (the app's lifespan), unless disabled."""
    if not runtime.settings.upstream_worker:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(_loop(runtime, stop), name="upstream-call-worker")
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
