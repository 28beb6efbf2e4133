"""The delivery worker: claims due outbox rows, posts them signed, and records every attempt.

Runs inside every ``broker serve`` process (started by the app's lifespan) and alone as
``broker worker``. Three steps per delivery, and no database session is open during the HTTP call:

1. claim (short transaction): lease due rows with ``FOR UPDATE SKIP LOCKED`` (:func:`repository.claim_due`);
2. post (no session): sign per Standard Webhooks with the endpoint's secret(s), ``follow_redirects``
   off, a timeout, and at most a few KiB of the response read;
3. record (short transaction): keep the attempt and release the lease with the outcome (finished
   attempts are recorded together, a few at a time, see :class:`DeliveryWorker`).

Guarantees:
    * At-least-once: a row leaves ``pending`` only when a 2xx was recorded or retries ran out. A worker
      that dies after claiming leaves a lease that expires (``BROKER_WEBHOOK_LEASE_SECONDS``, longer than
      the HTTP timeout), after which another worker claims and delivers the row again.
    * Two workers never post the same delivery at the same time: claims skip locked and leased rows,
      and a lease outlives the HTTP timeout.
    * Failures retry with exponential backoff and jitter (``base * 2**(n-1)``, capped, then scaled by a
      random factor in [0.5, 1]; a ``Retry-After`` of a 429/503 is honoured up to the cap) and are
      dead-lettered after ``BROKER_WEBHOOK_MAX_ATTEMPTS`` failures; the operator can redeliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import structlog

from broker import __version__
from broker.crypto import envelope
from broker.keys import sealing
from broker.observability import metrics
from broker.signals import stop_requested
from broker.webhooks import outbox, repository, safety, signing

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.settings import Settings

log = structlog.get_logger("broker.webhooks")

MAX_RESPONSE_CHARS = 2048
MAX_RESPONSE_BYTES = 4 * MAX_RESPONSE_CHARS
MAX_ERROR_CHARS = 500
MAX_RECORD_DELAY_SECONDS = 0.5
"""A finished attempt is recorded within this long (well inside any lease)."""
MAX_CLAIM_PAUSE_SECONDS = 30.0
"""After failed claims (the database is away), the worker waits this long at most before trying again."""
PRUNE_EVERY_SECONDS = 600.0
PRUNE_BATCH = 1000
USER_AGENT = f"broker-webhooks/{__version__}"
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_OUTCOMES = {"pending": "retry", "dead": "dead", "delivered": "delivered"}


@dataclass(frozen=True)
class WorkerConfig:
    """The worker's knobs (``BROKER_WEBHOOK_*``); tests shorten the timings."""

    timeout: float
    lease: float
    poll: float
    concurrency: int
    max_attempts: int
    backoff_base: float
    backoff_max: float
    allow_private: bool
    allow_http: bool
    retention_days: int = 30

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        """The configuration the settings describe."""
        return cls(
            timeout=settings.webhook_timeout_seconds,
            lease=settings.webhook_lease_seconds,
            poll=settings.webhook_poll_seconds,
            concurrency=settings.webhook_concurrency,
            max_attempts=settings.webhook_max_attempts,
            backoff_base=settings.webhook_backoff_base_seconds,
            backoff_max=settings.webhook_backoff_max_seconds,
            allow_private=settings.webhooks_may_target_private,
            allow_http=settings.webhooks_may_use_http,
            retention_days=settings.webhook_retention_days,
        )

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds before the next attempt after ``failures`` consecutive failures (jittered, capped)."""
        ceiling: float = min(self.backoff_max, self.backoff_base * 2.0 ** max(0, failures - 1))
        delay = ceiling * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not a secret
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay


@dataclass(frozen=True)
class Job:
    """A claimed delivery and its refresh token, opened in the claim's transaction (never stored plain)."""

    claimed: repository.ClaimedDelivery
    token: str | None = field(default=None, repr=False)
    token_unreadable: bool = False


@dataclass(frozen=True)
class Outcome:
    """What one HTTP attempt gave."""

    status_code: int | None
    response_body: str | None
    error: str | None
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        """A 2xx answer."""
        return self.status_code is not None and 200 <= self.status_code < 300  # noqa: PLR2004


def _retry_after(response: httpx.Response) -> float | None:
    if response.status_code not in _RETRY_AFTER_STATUSES:
        return None
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


def render_body(job: repository.ClaimedDelivery, token: str | None) -> bytes:
    """The exact bytes sent: the stored payload (plus the opened refresh token, if any) as compact JSON."""
    payload = job.payload
    if token is not None:
        payload = {**payload, "data": {**payload["data"], "refresh_token": token}}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


class DeliveryWorker:
    """Delivers the outbox. One per process; any number of processes may run against one database.

    Up to ``concurrency`` posts are in flight. Finished attempts are recorded in batches: before each
    claim, and within :data:`MAX_RECORD_DELAY_SECONDS` otherwise. Claims wait for a quarter of the slots
    to free up while posts are in flight, so a backlog is drained with one claim and one record
    transaction per several events rather than per event.
    """

    def __init__(
        self,
        runtime: Runtime,
        config: WorkerConfig | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.runtime = runtime
        self.config = config or WorkerConfig.from_settings(runtime.settings)
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: list[tuple[repository.ClaimedDelivery, Outcome, repository.Recorded]] = []
        self._claim_batch = max(1, self.config.concurrency // 4)
        self._claim_failures = 0
        self._claim_pause_until = 0.0
        self.delivered = 0
        self.failed = 0

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            transport = self._transport or safety.transport(
                guarded=not self.config.allow_private, max_connections=self.config.concurrency
            )
            self._http = httpx.AsyncClient(
                transport=transport,
                follow_redirects=False,
                timeout=httpx.Timeout(self.config.timeout),
                headers={"user-agent": USER_AGENT, "content-type": "application/json", "accept-encoding": "identity"},
            )
        return self._http

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, then let in-flight posts finish (up to the HTTP timeout)."""
        log.info("webhook worker started", concurrency=self.config.concurrency)
        last_claim = last_flush = -float("inf")
        next_prune = time.monotonic() + random.uniform(0, PRUNE_EVERY_SECONDS)  # noqa: S311 - spreads replicas
        flush_every = min(self.config.poll, MAX_RECORD_DELAY_SECONDS)
        try:
            while not stop.is_set():
                free = self.config.concurrency - len(self._tasks)
                now = time.monotonic()
                claim = (
                    free > 0
                    and now >= self._claim_pause_until
                    and (free >= self._claim_batch or not self._tasks or now - last_claim >= self.config.poll)
                )
                if self._finished and (claim or now - last_flush >= flush_every):
                    await self._flush()
                    last_flush = now
                if now >= next_prune:
                    await self.prune()
                    next_prune = now + PRUNE_EVERY_SECONDS
                if claim:
                    claimed = await self._claim(free)
                    last_claim = now
                    if claimed == free:
                        continue  # the outbox may hold more: claim again as slots free up
                stopped = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait(
                        {stopped, *self._tasks}, timeout=self.config.poll, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    stopped.cancel()
        finally:
            await self._drain()
            log.info("webhook worker stopped", delivered=self.delivered, failed=self.failed)

    async def run_once(self) -> int:
        """Claim what is due now (up to the concurrency), deliver and record it; return how many were claimed."""
        await self._flush()
        claimed = await self._claim(self.config.concurrency)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush()
        return claimed

    async def prune(self) -> int:
        """Delete delivered events older than the retention (``BROKER_WEBHOOK_RETENTION_DAYS``; 0 keeps all).

        Dead-lettered and pending events are kept whatever their age. Returns how many were deleted.
        """
        if self.config.retention_days <= 0:
            return 0
        older_than = timedelta(days=self.config.retention_days)
        deleted = 0
        try:
            while True:
                async with self.runtime.sessions() as session, session.begin():
                    batch = await repository.prune_delivered(session, older_than=older_than, limit=PRUNE_BATCH)
                deleted += batch
                if batch < PRUNE_BATCH:
                    break
        except Exception as exc:  # noqa: BLE001 - pruning is housekeeping; delivery goes on
            log.warning("webhook prune failed", error=type(exc).__name__)
        if deleted:
            log.info("webhook deliveries pruned", deleted=deleted, retention_days=self.config.retention_days)
        return deleted

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _drain(self) -> None:
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.config.timeout + 1)
            for task in pending:
                task.cancel()  # its lease expires and another worker retries it
            await asyncio.gather(*pending, return_exceptions=True)
        await self._flush()
        await self.aclose()

    async def _claim(self, limit: int) -> int:
        try:
            async with self.runtime.sessions() as session, session.begin():
                lease = timedelta(seconds=self.config.lease)
                jobs = [
                    await self._open(session, c) for c in await repository.claim_due(session, limit=limit, lease=lease)
                ]
        except Exception as exc:  # noqa: BLE001 - the database may be away; keep the loop alive, back off
            self._claim_failures += 1
            pause = min(MAX_CLAIM_PAUSE_SECONDS, self.config.poll * 2**self._claim_failures)
            self._claim_pause_until = time.monotonic() + pause
            log.warning(
                "webhook claim failed",
                error=type(exc).__name__,
                detail=str(exc)[:MAX_ERROR_CHARS],
                retry_in_seconds=round(pause, 2),
            )
            return 0
        self._claim_failures = 0
        for job in jobs:
            task = asyncio.create_task(self._deliver(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(jobs)

    async def _open(self, session: AsyncSession, claimed: repository.ClaimedDelivery) -> Job:
        if claimed.token_enc is None:
            return Job(claimed)
        aad = outbox.token_aad(claimed.tenant_id, claimed.id)
        try:
            token = await sealing.open_(session, self.runtime.ring, claimed.token_enc, aad)
        except envelope.EnvelopeError:  # e.g. the owner's data key was shredded: the token is gone
            return Job(claimed, token_unreadable=True)
        return Job(claimed, token.decode())

    def _signing_secrets(self, job: repository.ClaimedDelivery) -> list[str]:
        ring = self.runtime.ring
        aad = outbox.endpoint_secret_aad(job.endpoint_owner_id, job.endpoint_id)
        found = [envelope.open_(ring, job.secret_enc, aad).decode()]
        expires = job.previous_secret_expires_at
        if job.previous_secret_enc is not None and expires is not None and expires > datetime.now(UTC):
            previous_aad = outbox.endpoint_secret_aad(job.endpoint_owner_id, job.endpoint_id, previous=True)
            found.append(envelope.open_(ring, job.previous_secret_enc, previous_aad).decode())
        return found

    async def _post(self, opened: Job) -> Outcome:
        job = opened.claimed
        try:
            safety.check_url(job.url, allow_http=self.config.allow_http)
            if opened.token_unreadable:
                return Outcome(None, None, "the shared refresh token no longer opens (its data key is gone)")
            body = render_body(job, opened.token)
            headers = signing.headers(job.event_id, int(time.time()), body, self._signing_secrets(job))
        except safety.UnsafeTarget as exc:
            return Outcome(None, None, f"refused: {exc}")
        except envelope.EnvelopeError:
            return Outcome(None, None, "the endpoint's signing secret does not open under the key ring")
        try:
            async with self._client().stream("POST", job.url, content=body, headers=headers) as response:
                text = await _read_limited(response)
                return Outcome(response.status_code, text, None, _retry_after(response))
        except httpx.TimeoutException:
            return Outcome(None, None, f"timeout after {self.config.timeout:g}s")
        except httpx.HTTPError as exc:
            return Outcome(None, None, (f"{type(exc).__name__}: {exc}")[:MAX_ERROR_CHARS])

    async def _deliver(self, opened: Job) -> None:
        job = opened.claimed
        attempted_at = datetime.now(UTC)
        started = time.perf_counter()
        try:
            outcome = await self._post(opened)
        except Exception as exc:  # a bug must not kill the worker; the attempt is kept
            log.exception("webhook delivery crashed", delivery_id=str(job.id))
            outcome = Outcome(None, None, f"internal error: {type(exc).__name__}")
        duration_ms = int((time.perf_counter() - started) * 1000)
        failures = 0 if outcome.succeeded else job.failures + 1
        retry_in = None
        if outcome.succeeded:
            status = "delivered"
        elif failures >= self.config.max_attempts:
            status = "dead"
        else:
            status, retry_in = "pending", self.config.backoff(failures, outcome.retry_after)
        recorded = repository.Recorded(
            delivery_id=job.id,
            claim_id=job.claim_id,
            attempted_at=attempted_at,
            duration_ms=duration_ms,
            status_code=outcome.status_code,
            response_body=outcome.response_body,
            error=outcome.error,
            status=status,
            failures=failures,
            retry_in=retry_in,
        )
        self._finished.append((job, outcome, recorded))

    async def _flush(self) -> None:
        """Record every finished attempt in one transaction (kept for the next flush if it fails)."""
        if not self._finished:
            return
        batch, self._finished = self._finished, []
        try:
            async with self.runtime.engine.begin() as connection:  # no ORM session: text statements only
                released = await repository.record(connection, [recorded for _, _, recorded in batch])
        except Exception as exc:  # noqa: BLE001 - retried at the next flush; meanwhile the leases hold
            log.warning("webhook record failed", error=type(exc).__name__, pending=len(batch))
            self._finished = batch + self._finished
            return
        for job, outcome, recorded in batch:
            metrics.WEBHOOK_DELIVERIES.inc("delivered" if outcome.succeeded else _OUTCOMES[recorded.status])
            if outcome.succeeded:
                self.delivered += 1
                continue
            self.failed += 1
            log.warning(
                "webhook delivery failed",
                delivery_id=str(job.id),
                endpoint_id=str(job.endpoint_id),
                event_type=job.event_type,
                status_code=outcome.status_code,
                error=outcome.error,
                failures=recorded.failures,
                next_status=recorded.status,
                claim_kept=job.id in released,
            )


async def _read_limited(response: httpx.Response) -> str:
    """At most :data:`MAX_RESPONSE_CHARS` characters of the body, reading at most a few KiB."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():  # identity encoding was asked: no decompression
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_RESPONSE_BYTES:
            break
    return b"".join(chunks)[:MAX_RESPONSE_BYTES].decode("utf-8", errors="replace")[:MAX_RESPONSE_CHARS]


@contextlib.asynccontextmanager
async def running(runtime: Runtime) -> AsyncIterator[DeliveryWorker | None]:
    """Run a :class:`DeliveryWorker` in the background for the duration of the block (the app's lifespan).

    Does nothing (yields None) when ``BROKER_WEBHOOK_WORKER`` is off.
    """
    if not runtime.settings.webhook_worker:
        yield None
        return
    stop = asyncio.Event()
    worker = DeliveryWorker(runtime)
    task = asyncio.create_task(worker.run(stop), name="webhook-worker")
    try:
        yield worker
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run_forever(runtime: Runtime) -> DeliveryWorker:
    """Run one worker until SIGINT or SIGTERM (``broker worker``); in-flight posts finish first."""
    worker = DeliveryWorker(runtime)
    with stop_requested() as stop:
        await worker.run(stop)
    return worker
