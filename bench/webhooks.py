"""Webhook delivery throughput: events per second from the outbox to a local receiver.

    .venv/bin/python -m bench.webhooks [--events 5000] [--workers 1] [--concurrency 16] [--verify]

One run: a throw-away database (``BENCH_DATABASE_URL``, else the local server, else the embedded one),
migrated; a partner with one endpoint pointing at a receiver on 127.0.0.1 (a separate process: a
minimal asyncio HTTP/1.1 server answering 204, verifying every signature with ``--verify``); ``--events``
outbox rows queued (realistic ``grant.revoked`` payloads); then ``--workers`` ``broker worker``
processes, exactly as operators run them, drain the outbox. The figure is the number of events over
the time between the first and the last request the receiver got; the database must show every row
``delivered`` with one attempt each. ``events_per_worker_cpu_second`` (events over the CPU time the
worker processes used, start-up included) is the figure to compare on a busy machine. Everything
started is stopped, and the database dropped, on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from bench.infra import CLOCK_TICKS, BenchError, Database, _proc_stat, create_database, free_port, stop_group
from broker.app import build_runtime
from broker.crypto.keyring import generate_key
from broker.db import migrate
from broker.settings import Settings
from broker.tenants import service as tenants
from broker.webhooks import outbox, repository
from broker.webhooks import service as webhooks

BATCH = 1000


# ------------------------------------------------------------------------------------------- receiver


class _Counter:
    def __init__(self, secret: str | None) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.bad = 0
        self.verifier = None
        if secret:
            from broker.client import WebhookVerifier  # noqa: PLC0415 - only with --verify

            self.verifier = WebhookVerifier(secret)

    def hit(self, headers: dict[str, str], body: bytes) -> None:
        now = time.time()
        if self.verifier is not None:
            try:
                self.verifier.verify(body, headers)
            except Exception:  # noqa: BLE001 - counted, not fatal
                self.bad += 1
        self.count += 1
        self.first = self.first or now
        self.last = now


async def _serve_receiver(port: int, secret: str | None) -> None:
    counter = _Counter(secret)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if request_line.startswith(b"GET"):
                    answer = json.dumps(vars(counter) | {"verifier": None}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
                else:
                    counter.hit(headers, body)
                    writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------------------------------------ setup


async def _seed(settings: Settings, url: str, events: int) -> str:
    """A partner, its endpoint at ``url``, and ``events`` queued deliveries; returns the signing secret."""
    runtime = build_runtime(settings)
    try:
        async with runtime.sessions() as session, session.begin():
            partner, _ = await tenants.create_tenant(
                session,
                runtime.ring,
                tenants.TenantSpec(name="bench partner", kind="partner"),
                actor="bench",
                request_id=None,
            )
            view, secret = await webhooks.create_endpoint(
                session,
                runtime.ring,
                settings,
                webhooks.EndpointSpec(url=url),
                client_id=partner.client_id,
                audience=None,
                actor="bench",
                request_id=None,
            )
        now = datetime.now(UTC)
        for start in range(0, events, BATCH):
            rows: list[dict[str, Any]] = []
            for _ in range(min(BATCH, events - start)):
                revoked = [str(uuid.uuid4()) for _ in range(3)]
                data = {
                    "grant_id": revoked[0],
                    "reason": "token.revoked",
                    "revoked_grants": revoked,
                    "recipient": partner.client_id,
                }
                rows.append(
                    {
                        "id": uuid.uuid4(),
                        "event_id": outbox.new_event_id(),
                        "event_type": outbox.GRANT_REVOKED,
                        "endpoint_id": view.endpoint.id,
                        "tenant_id": partner.id,
                        "payload": outbox.body_payload(outbox.GRANT_REVOKED, now, data),
                    }
                )
            async with runtime.sessions() as session, session.begin():
                await repository.insert_deliveries(session, rows)
        return secret
    finally:
        await runtime.close()


def _wait_for(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            httpx.get(url, timeout=1)
            return
        time.sleep(0.05)
    raise BenchError(f"{url} did not answer")


def run(events: int, workers: int, concurrency: int, *, verify: bool) -> dict[str, Any]:
    """One measured run; returns the figures."""
    database: Database = create_database()
    processes: list[subprocess.Popen[bytes]] = []
    env = {
        **os.environ,
        "BROKER_ENV": "development",
        "BROKER_DATABASE_URL": database.url,
        "BROKER_KEYS": f"bench:{generate_key()}",
        "BROKER_HASH_KEY": generate_key(),
        "BROKER_LOG_LEVEL": "WARNING",
        "BROKER_WEBHOOK_CONCURRENCY": str(concurrency),
        "BROKER_WEBHOOK_POLL_SECONDS": "0.05",
    }
    try:
        migrate.upgrade(database.url)
        port = free_port()
        receiver_url = f"http://127.0.0.1:{port}/hooks"
        os.environ.update({k: env[k] for k in ("BROKER_DATABASE_URL", "BROKER_KEYS", "BROKER_HASH_KEY")})
        settings = Settings(env="development")
        secret = asyncio.run(_seed(settings, receiver_url, events))
        receiver_cmd = [sys.executable, "-m", "bench.webhooks", "--receiver", str(port)]
        if verify:
            receiver_cmd += ["--secret", secret]
        processes.append(subprocess.Popen(receiver_cmd, env=env, start_new_session=True))  # noqa: S603 - our own argv
        _wait_for(receiver_url)
        started = time.monotonic()
        worker_cmd = [sys.executable, "-m", "broker", "worker", "--no-migrate"]
        processes += [subprocess.Popen(worker_cmd, env=env, start_new_session=True) for _ in range(workers)]  # noqa: S603
        deadline = started + 600
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = httpx.get(receiver_url, timeout=5).json()
            if state["count"] >= events:
                break
            time.sleep(0.1)
        wall = time.monotonic() - started
        cpu_ticks = sum((_proc_stat(p.pid) or (0, 0, 0))[2] for p in processes[1:])
        delivered = 0
        for _ in range(100):  # the last outcomes are recorded within half a second
            delivered = database.scalar(
                "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered' AND attempt_count = 1"
            )
            if delivered >= events:
                break
            time.sleep(0.1)
        span = state["last"] - state["first"]
        return {
            "events": events,
            "workers": workers,
            "concurrency_per_worker": concurrency,
            "verified_by_receiver": verify,
            "received": state["count"],
            "bad_signatures": state["bad"],
            "delivered_once_in_db": delivered,
            "seconds_first_to_last": round(span, 3),
            "events_per_second": round(events / span, 1) if span > 0 else None,
            "seconds_including_worker_start": round(wall, 3),
            "worker_cpu_seconds": round(cpu_ticks / CLOCK_TICKS, 2),
            "events_per_worker_cpu_second": round(events / (cpu_ticks / CLOCK_TICKS), 1) if cpu_ticks else None,
            "database": database.where,
        }
    finally:
        for process in reversed(processes):
            stop_group(process)
        database.drop()


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1, help="broker worker processes")
    parser.add_argument("--concurrency", type=int, default=16, help="BROKER_WEBHOOK_CONCURRENCY per worker")
    parser.add_argument("--verify", action="store_true", help="the receiver verifies every signature")
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        asyncio.run(_serve_receiver(args.receiver, args.secret))
        return
    result = run(args.events, args.workers, args.concurrency, verify=args.verify)
    print(json.dumps(result, indent=2))  # noqa: T201
    if result["received"] != args.events or result["delivered_once_in_db"] != args.events or result["bad_signatures"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
