"""Helpers for webhook tests: a real HTTP receiver on 127.0.0.1, fast worker timings, endpoints, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy import delete, select

from broker.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from broker.webhooks import service as webhooks
from broker.webhooks.delivery import DeliveryWorker, WorkerConfig
from tests.oauth_helpers import EXCHANGE, MULTI, build_world, token_ok


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def event_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass(frozen=True)
class Reply:
    """What the receiver answers: a status, a body, after an optional delay, with optional headers."""

    status: int = 204
    body: bytes = b""
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[int, Received], Reply]
"""``(index of the request for its webhook-id (0-based), request) -> Reply``."""


class Receiver:
    """A threaded HTTP server on 127.0.0.1 that records every request and answers as told.

    It also records, per ``webhook-id``, the largest number of requests it was serving at once, so a
    test can prove that no two workers posted the same delivery at the same time.
    """

    def __init__(self, respond: Responder | None = None) -> None:
        self.respond: Responder = respond or (lambda _n, _r: Reply())
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._per_id: Counter[str] = Counter()
        self._in_flight: Counter[str] = Counter()
        self.max_in_flight_per_id = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                event_id = received.headers.get("webhook-id", "")
                with receiver._lock:
                    index = receiver._per_id[event_id]
                    receiver._per_id[event_id] += 1
                    receiver._in_flight[event_id] += 1
                    receiver.max_in_flight_per_id = max(receiver.max_in_flight_per_id, receiver._in_flight[event_id])
                    receiver.requests.append(received)
                try:
                    reply = receiver.respond(index, received)
                    if reply.delay:
                        time.sleep(reply.delay)
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(reply.body)))
                    # One request per connection: the socket is closed when the handler returns, so no
                    # idle keep-alive socket outlives the receiver (ResourceWarning is an error here).
                    self.send_header("connection", "close")
                    self.close_connection = True
                    self.end_headers()
                    self.wfile.write(reply.body)
                finally:
                    with receiver._lock:
                        receiver._in_flight[event_id] -= 1

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def events(self, event_type: str | None = None) -> list[Received]:
        with self._lock:
            found = list(self.requests)
        return [r for r in found if event_type is None or r.event["type"] == event_type]

    def count(self, event_id: str) -> int:
        with self._lock:
            return self._per_id[event_id]


def fast_config(**overrides: Any) -> WorkerConfig:
    """Worker timings for tests: quick polls, tiny backoff, short leases; private targets allowed."""
    base = WorkerConfig(
        timeout=2.0,
        lease=3.0,
        poll=0.02,
        concurrency=8,
        max_attempts=5,
        backoff_base=0.02,
        backoff_max=0.1,
        allow_private=True,
        allow_http=True,
    )
    return dataclasses.replace(base, **overrides)


@contextlib.asynccontextmanager
async def worker_running(runtime: Any, config: WorkerConfig | None = None) -> AsyncIterator[DeliveryWorker]:
    """A delivery worker in the background of the test's event loop for the block."""
    stop = asyncio.Event()
    worker = DeliveryWorker(runtime, config or fast_config())
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def wait_until(predicate: Callable[[], Any], within: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            msg = f"condition not met within {within}s"
            raise AssertionError(msg)
        await asyncio.sleep(interval)


async def make_endpoint(
    runtime: Any,
    url: str,
    *,
    client_id: str | None = None,
    audience: str | None = None,
    events: tuple[str, ...] | None = None,
) -> tuple[uuid.UUID, str]:
    """Register an endpoint through the service; return its id and secret."""
    async with runtime.sessions() as session, session.begin():
        view, secret = await webhooks.create_endpoint(
            session,
            runtime.ring,
            runtime.settings,
            webhooks.EndpointSpec(url=url, events=events),
            client_id=client_id,
            audience=audience,
            actor="test",
            request_id=None,
        )
    return view.endpoint.id, secret


async def deliveries(runtime: Any, endpoint_id: uuid.UUID) -> list[WebhookDelivery]:
    async with runtime.sessions() as session:
        result = await session.execute(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.created_at)
        )
        return list(result.scalars())


async def attempts(runtime: Any, delivery_id: uuid.UUID) -> list[WebhookAttempt]:
    async with runtime.sessions() as session:
        result = await session.execute(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id).order_by(WebhookAttempt.id)
        )
        return list(result.scalars())


async def delete_endpoints(runtime: Any, endpoint_ids: list[uuid.UUID]) -> None:
    """Remove test endpoints (and their outbox rows), so later tests' workers never see them."""
    if endpoint_ids:
        async with runtime.sessions() as session, session.begin():
            await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id.in_(endpoint_ids)))


@dataclass
class Hooks:
    """What a webhook test needs: the app client, the test runtime, a world, a receiver, and endpoints."""

    client: Any
    runtime: Any
    settings: Any
    sessions: Any
    make_tenant: Any
    world: Any
    receiver: Receiver
    created: list[uuid.UUID] = field(default_factory=list)

    async def endpoint(self, url: str, **kwargs: Any) -> tuple[uuid.UUID, str]:
        endpoint_id, secret = await make_endpoint(self.runtime, url, **kwargs)
        self.created.append(endpoint_id)
        return endpoint_id, secret

    async def share(self, audience: str, client: Any = None) -> dict[str, Any]:
        return await token_ok(
            client or self.client,
            self.world.lender,
            grant_type=EXCHANGE,
            subject_token=self.world.user["user_id"],
            subject_token_type=MULTI,
            audience=audience,
        )

    async def rows(self, endpoint_id: uuid.UUID, status: str | None = None) -> list[WebhookDelivery] | None:
        """The endpoint's deliveries; with ``status``, only once every one has it (else None)."""
        found = await deliveries(self.runtime, endpoint_id)
        if status is None:
            return found
        return found if found and all(r.status == status for r in found) else None


@contextlib.asynccontextmanager
async def open_hooks(client: Any, runtime: Any, settings: Any, sessions: Any, make_tenant: Any) -> AsyncIterator[Hooks]:
    """A :class:`Hooks` for one test; its endpoints (and their outbox rows) are deleted afterwards."""
    receiver = Receiver().start()
    world = await build_world(client, sessions, make_tenant)
    hooks = Hooks(client, runtime, settings, sessions, make_tenant, world, receiver)
    try:
        yield hooks
    finally:
        receiver.close()
        await delete_endpoints(runtime, hooks.created)
