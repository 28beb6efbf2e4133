"""Crash: the server SIGKILLed under load loses nothing, and ``broker check`` proves the database whole.

After each kill and restart: every refresh chain resumes from the last refresh token its client holds
(a rotation committed before the kill is answered again from the grace window; one that was not is
simply done now), every access token a client received introspects active, every shared multi-party
token still forks, and ``broker check`` finds no half-written grant, orphan token or broken rotation.

``make chaos`` runs more rounds (``BROKER_CHAOS_ROUNDS``); ``make test`` runs one.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
import pytest

from broker.app import build_runtime
from broker.tenants import service as tenants
from tests.conftest import Client
from tests.fault_helpers import Server, fresh_database, report
from tests.oauth_helpers import EXCHANGE, MULTI, add_member, allow, new_audience

ROUNDS = int(os.environ.get("BROKER_CHAOS_ROUNDS", "1"))
LOAD_SECONDS = 1.5
CHAINS = 8


@dataclass
class Chain:
    """A client's rotating refresh lineage: the refresh token it holds, and every access token it got."""

    creds: Client
    refresh: str
    access: list[str] = field(default_factory=list)


@dataclass
class Shared:
    """A multi-party token: the lender's pair, and the partner that forks from it."""

    lender_access: str
    refresh: str


async def _post(http: httpx.AsyncClient, path: str, creds: Client, **body: str) -> httpx.Response:
    return await http.post(path, json=body, headers=creds.headers)


async def _refresh_loop(http: httpx.AsyncClient, chain: Chain, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            response = await _post(
                http, "/oauth/token", chain.creds, grant_type="refresh_token", refresh_token=chain.refresh
            )
        except httpx.TransportError:
            return  # killed mid-request: the client still holds chain.refresh
        assert response.status_code == 200, response.text
        chain.refresh = response.json()["refresh_token"]
        chain.access.append(response.json()["access_token"])


async def _exchange_loop(http: httpx.AsyncClient, lender: Client, urn: str, shared: list[Shared], stop: asyncio.Event):
    n = 0
    while not stop.is_set():
        n += 1
        try:
            user = await _post(http, "/user/create", lender, client_user_id=f"crash-{time.monotonic_ns()}-{n}")
            assert user.status_code == 200, user.text
            response = await _post(
                http,
                "/oauth/token",
                lender,
                grant_type=EXCHANGE,
                subject_token=user.json()["user_id"],
                subject_token_type=MULTI,
                audience=urn,
            )
        except httpx.TransportError:
            return
        assert response.status_code == 200, response.text
        shared.append(Shared(response.json()["access_token"], response.json()["refresh_token"]))


async def _until_serving(url: str, creds: Client, started: float) -> float:
    """Poll a token request until one succeeds; return seconds since ``started``."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        while True:
            response = await _post(http, "/oauth/token", creds, grant_type="client_credentials")
            if response.status_code == 200:
                return time.monotonic() - started
            await asyncio.sleep(0.05)


def broker_check(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BROKER_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "broker", "check"], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.timeout(300)
async def test_sigkill_under_load_loses_nothing_and_broker_check_is_clean(settings):
    async with fresh_database(os.environ["BROKER_DATABASE_URL"]) as url:
        runtime = build_runtime(settings.model_copy(update={"database_url": url}))
        try:
            made = []
            for name, kind in (("crash lender", "customer"), ("crash partner", "partner")):
                async with runtime.sessions() as session, session.begin():
                    tenant, secret = await tenants.create_tenant(
                        session, runtime.ring, tenants.TenantSpec(name=name, kind=kind), actor="test", request_id=None
                    )
                made.append(Client(tenant.client_id, secret, tenant.id))
            lender, partner = made
            urn = await new_audience(runtime.sessions)
            await add_member(runtime.sessions, urn, partner.tenant_id)
            await allow(runtime.sessions, lender.tenant_id, urn=urn)
        finally:
            await runtime.close()

        server = Server({"BROKER_DATABASE_URL": url, "BROKER_REFRESH_GRACE_SECONDS": "120"})
        server.start()
        chains: list[Chain] = []
        shared: list[Shared] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            for _ in range(CHAINS):
                first = (await _post(http, "/oauth/token", lender, grant_type="client_credentials")).json()
                chains.append(Chain(lender, first["refresh_token"], [first["access_token"]]))
        recoveries = []
        try:
            for _round in range(ROUNDS):
                stop = asyncio.Event()
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                    jobs = [asyncio.create_task(_refresh_loop(http, chain, stop)) for chain in chains]
                    jobs += [asyncio.create_task(_exchange_loop(http, lender, urn, shared, stop)) for _ in range(2)]
                    await asyncio.sleep(LOAD_SECONDS)
                    await asyncio.to_thread(server.kill)  # SIGKILL while requests are in flight
                    done = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 30)
                    failures = [r for r in done if isinstance(r, BaseException)]
                    assert not failures, failures
                restarted = time.monotonic()
                server.start()
                recoveries.append(await _until_serving(server.url, lender, restarted))

                async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                    # every chain resumes from the refresh token its client holds, through the grace window
                    # if the kill lost the response, and then keeps rotating
                    for chain in chains:
                        for _ in range(2):
                            response = await _post(
                                http,
                                "/oauth/token",
                                chain.creds,
                                grant_type="refresh_token",
                                refresh_token=chain.refresh,
                            )
                            assert response.status_code == 200, response.text
                            chain.refresh = response.json()["refresh_token"]
                            chain.access.append(response.json()["access_token"])
                    # every access token any client received is still good
                    for chain in chains:
                        for token in chain.access:
                            info = await _post(http, "/oauth/introspect", chain.creds, token=token)
                            assert info.json()["active"] is True, info.text
                    for item in shared:
                        info = await _post(http, "/oauth/introspect", lender, token=item.lender_access)
                        assert info.json()["active"] is True, info.text
                        fork = await _post(
                            http, "/oauth/token", partner, grant_type="refresh_token", refresh_token=item.refresh
                        )
                        assert fork.status_code == 200, fork.text
                assert shared, "the exchange load never completed a request"
        finally:
            server.stop()

        checked = broker_check(url)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "clean" in checked.stdout
        report(f"crash recovery: {ROUNDS} SIGKILL round(s), restart to first token in {max(recoveries):.2f} s at most")
