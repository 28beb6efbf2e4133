"""Database outage: PostgreSQL stopped under load, then started again, with broker left running.

Uses a PostgreSQL cluster of the test's own (never the machine's shared one). While it is down every
answer is a 503 JSON error with ``Retry-After`` and a request id, none takes more than 5 s, and readiness
goes red; once it is back broker serves again within 10 s without a restart, readiness is green, every
token handed out before, during or after works, no grant was lost or duplicated, and tokens revoked or
rotated before the outage stay dead.

``make test`` stops the database for ``BROKER_CHAOS_OUTAGE_SECONDS`` (2 s); ``make chaos`` for 5 s.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

import httpx
import pytest

from broker.app import build_runtime
from broker.db import migrate
from broker.tenants import service as tenants
from tests.conftest import Client
from tests.fault_helpers import PrivatePostgres, Server, report
from tests.test_crash_recovery import broker_check

OUTAGE_SECONDS = float(os.environ.get("BROKER_CHAOS_OUTAGE_SECONDS", "2"))
WORKERS = 6
MAX_LATENCY = 5.0
RECOVERY_LIMIT = 10.0


@dataclass
class Log:
    """Everything the load saw."""

    answers: list[tuple[float, int, float]] = field(default_factory=list)  # (sent at, status, latency)
    bad: list[str] = field(default_factory=list)
    access: list[str] = field(default_factory=list)
    readiness: list[tuple[float, int]] = field(default_factory=list)


async def _call(http: httpx.AsyncClient, log: Log, path: str, creds: Client, **body: str) -> httpx.Response | None:
    sent = time.monotonic()
    try:
        response = await http.post(path, json=body, headers=creds.headers)
    except httpx.TransportError as exc:
        log.bad.append(f"{path}: transport error {type(exc).__name__}")
        return None
    latency = time.monotonic() - sent
    log.answers.append((sent, response.status_code, latency))
    if response.status_code == 503:
        payload = response.json()
        if not (
            response.headers.get("retry-after")
            and payload.get("error") == "temporarily_unavailable"
            and payload.get("request_id") == response.headers.get("x-request-id")
            and "Traceback" not in response.text
        ):
            log.bad.append(f"{path}: malformed 503 {response.text[:200]}")
    elif response.status_code != 200:
        log.bad.append(f"{path}: {response.status_code} {response.text[:200]}")
    return response


async def _worker(http: httpx.AsyncClient, log: Log, creds: Client, stop: asyncio.Event) -> None:
    refresh: str | None = None
    while not stop.is_set():
        if refresh is None:
            response = await _call(http, log, "/oauth/token", creds, grant_type="client_credentials")
        else:
            response = await _call(http, log, "/oauth/token", creds, grant_type="refresh_token", refresh_token=refresh)
        if response is not None and response.status_code == 200:
            refresh = response.json()["refresh_token"]
            log.access.append(response.json()["access_token"])
            await _call(http, log, "/oauth/introspect", creds, token=response.json()["access_token"])
        else:
            await asyncio.sleep(0.05)


async def _readiness(http: httpx.AsyncClient, log: Log, stop: asyncio.Event) -> None:
    while not stop.is_set():
        sent = time.monotonic()
        try:
            status = (await http.get("/readyz")).status_code
        except httpx.TransportError:
            status = 0
        log.readiness.append((sent, status))
        await asyncio.sleep(0.2)


async def _setup(url: str, settings) -> Client:
    await asyncio.to_thread(migrate.upgrade, url)
    runtime = build_runtime(settings.model_copy(update={"database_url": url}))
    try:
        async with runtime.sessions() as session, session.begin():
            tenant, secret = await tenants.create_tenant(
                session, runtime.ring, tenants.TenantSpec(name="outage lender"), actor="test", request_id=None
            )
    finally:
        await runtime.close()
    return Client(tenant.client_id, secret, tenant.id)


@pytest.mark.timeout(300)
async def test_a_database_outage_is_503s_then_recovery_without_a_restart(settings):
    cluster = PrivatePostgres()
    try:
        await asyncio.to_thread(cluster.init)
        await asyncio.to_thread(cluster.start)
        lender = await _setup(cluster.url, settings)
        server = Server({"BROKER_DATABASE_URL": cluster.url, "BROKER_REFRESH_GRACE_SECONDS": "1"})
        await asyncio.to_thread(server.start)
        log = Log()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                # tokens made dead before the outage: one revoked, one rotated (outside the 1 s grace later)
                revoked = (await _call(http, log, "/oauth/token", lender, grant_type="client_credentials")).json()  # type: ignore[union-attr]
                await _call(http, log, "/oauth/revoke", lender, token=revoked["refresh_token"])
                rotated = (await _call(http, log, "/oauth/token", lender, grant_type="client_credentials")).json()  # type: ignore[union-attr]
                await _call(
                    http,
                    log,
                    "/oauth/token",
                    lender,
                    grant_type="refresh_token",
                    refresh_token=rotated["refresh_token"],
                )

                stop = asyncio.Event()
                jobs = [asyncio.create_task(_worker(http, log, lender, stop)) for _ in range(WORKERS)]
                jobs.append(asyncio.create_task(_readiness(http, log, stop)))
                await asyncio.sleep(1.5)
                down_at = time.monotonic()
                await asyncio.to_thread(cluster.stop, "immediate")
                await asyncio.sleep(OUTAGE_SECONDS)
                await asyncio.to_thread(cluster.start)
                up_at = time.monotonic()
                while time.monotonic() - up_at < RECOVERY_LIMIT + 3:
                    await asyncio.sleep(0.25)
                    recent = [s for sent, s, _ in log.answers if sent > time.monotonic() - 1.5]
                    if recent and all(s == 200 for s in recent) and time.monotonic() - up_at > 2:
                        break
                stop.set()
                await asyncio.wait_for(asyncio.gather(*jobs), 30)

                assert not log.bad, log.bad[:10]
                during = [s for sent, s, _ in log.answers if down_at + 0.5 < sent < up_at]
                assert during, "no request was answered while the database was down"
                assert 503 in during
                assert max(latency for _, _, latency in log.answers) < MAX_LATENCY
                served_again = min(sent for sent, s, _ in log.answers if sent > up_at and s == 200)
                recovery = served_again - up_at
                assert recovery < RECOVERY_LIMIT
                assert all(s == 200 for sent, s, _ in log.answers if sent > served_again + 1.0)
                ready = [s for _, s in log.readiness]
                assert ready[0] == 200
                assert 503 in [s for sent, s in log.readiness if down_at < sent < up_at]
                assert ready[-1] == 200

                # nothing lost: every token handed out works; the dead stay dead
                for token in log.access:
                    info = await http.post("/oauth/introspect", json={"token": token}, headers=lender.headers)
                    assert info.json()["active"] is True, info.text
                for dead in (revoked["refresh_token"], rotated["refresh_token"]):
                    again = await http.post(
                        "/oauth/token",
                        json={"grant_type": "refresh_token", "refresh_token": dead},
                        headers=lender.headers,
                    )
                    assert again.status_code == 400, again.text
                    assert again.json()["error"] == "invalid_grant"
                info = await http.post(
                    "/oauth/introspect", json={"token": revoked["access_token"]}, headers=lender.headers
                )
                assert info.json()["active"] is False
        finally:
            await asyncio.to_thread(server.stop)

        import asyncpg  # noqa: PLC0415

        connection = await asyncpg.connect(cluster.url)
        try:
            duplicated = await connection.fetchval(
                "SELECT count(*) FROM (SELECT request_id FROM grants GROUP BY request_id HAVING count(*) > 1) d"
            )
            grants = await connection.fetchval("SELECT count(*) FROM grants")
        finally:
            await connection.close()
        assert duplicated == 0
        assert grants >= 3
        checked = await asyncio.to_thread(broker_check, cluster.url)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        statuses = [s for _, s, _ in log.answers]
        slowest = max(latency for *_, latency in log.answers)
        report(
            f"database outage: {OUTAGE_SECONDS:.0f} s down, {len(statuses)} answers "
            f"({statuses.count(200)} ok, {statuses.count(503)} 503), slowest {slowest:.2f} s, "
            f"serving again {recovery:.2f} s after the database returned"
        )
    finally:
        await asyncio.to_thread(cluster.destroy)
