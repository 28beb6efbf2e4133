"""Gateway mode when the upstream misbehaves: 5xx, garbage, resets, slowness, outages; and concurrency.

A fault-injecting proxy sits between the gateway and a real upstream (a second broker in issuer mode).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import func, select

from broker.app import build_runtime, create_app
from broker.crypto import tokens
from broker.db.models import Grant, RefreshToken, UpstreamCall
from broker.gateway import calls
from broker.settings import Settings
from tests.gateway_helpers import EXCHANGE, MULTI, USER, UpstreamBroker, build_gateway_world, proxy_to, upstream_broker


@pytest.fixture(scope="module")
async def up() -> AsyncIterator[UpstreamBroker]:
    async with upstream_broker() as broker:
        yield broker


@pytest.fixture
async def fast_gateway() -> AsyncIterator[AsyncTestClient[Any]]:
    """A gateway with short upstream timeouts and a quick circuit breaker."""
    settings = Settings(
        upstream_timeout_seconds=0.5,
        upstream_connect_timeout_seconds=0.5,
        upstream_retries=1,
        upstream_breaker_failures=3,
        upstream_breaker_open_seconds=1.0,
    )
    async with AsyncTestClient(app=create_app(settings), base_url="http://gateway.test") as gateway:
        yield gateway


async def _token(client: Any, creds: Any, **params: Any) -> Any:
    return await client.post("/oauth/token", json=params, headers=creds.headers)


async def _pending(runtime: Any, tenant_id: Any) -> int:
    async with runtime.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(UpstreamCall)
            .where(UpstreamCall.tenant_id == tenant_id, UpstreamCall.completed_at.is_(None))
        )
    return int(count or 0)


async def test_upstream_failures_become_502_or_503_with_retry_after_and_issuance_is_never_repeated(  # noqa: PLR0917
    fast_gateway, client, runtime, make_tenant, up, capfd
):
    with proxy_to(up.url) as proxy:
        # Set up through the regular gateway (ordinary timeouts); the faults go through the fast one.
        world = await build_gateway_world(client, runtime, make_tenant, up, proxy.url)
        lender = world.lender.local
        for mode, status in (("error", 502), ("garbage", 502), ("reset", 502)):
            proxy.mode = mode
            before = proxy.count("/oauth/token")
            response = await _token(fast_gateway, lender, grant_type="client_credentials")
            assert response.status_code == status, (mode, response.text)
            assert int(response.headers["retry-after"]) >= 1
            body = response.json()
            assert body["error"] == "server_error"
            assert body["request_id"] == response.headers["x-request-id"]
            assert proxy.count("/oauth/token") == before + 1, mode  # token issuance is not retried once sent

        # Three failures in a row opened the circuit: refused at once, the upstream is not called.
        proxy.mode = "pass"
        before = proxy.count()
        response = await _token(fast_gateway, lender, grant_type="client_credentials")
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "temporarily_unavailable"
        assert int(response.headers["retry-after"]) >= 1
        assert proxy.count() == before
        await asyncio.sleep(1.1)  # half-open: one probe goes through and closes the circuit
        issued = await _token(fast_gateway, lender, grant_type="client_credentials")
        assert issued.status_code == 200, issued.text
        access = issued.json()["access_token"]

        proxy.mode, proxy.delay = "slow", 1.5
        response = await _token(fast_gateway, lender, grant_type="client_credentials")
        assert response.status_code == 503, response.text
        assert "retry-after" in response.headers

        # Introspection is safe to repeat: one 500 is retried transparently.
        proxy.mode, proxy.fail_next = "error", 1
        before = proxy.count("/oauth/introspect")
        described = await fast_gateway.post("/oauth/introspect", json={"token": access}, headers=lender.headers)
        assert described.status_code == 200, described.text
        assert described.json()["active"] is True
        assert proxy.count("/oauth/introspect") == before + 2
    exposition = (await fast_gateway.get("/metrics")).text
    assert 'broker_upstream_requests_total{route="/oauth/token",outcome="failed"}' in exposition
    assert 'broker_upstream_requests_total{route="/oauth/token",outcome="circuit_open"}' in exposition
    captured = capfd.readouterr()
    for secret in (world.lender.upstream.secret, world.partner_a.upstream.secret):
        assert secret not in captured.out
        assert secret not in captured.err
        assert secret not in exposition
        assert world.lender.upstream.client_id not in exposition


async def test_revocation_and_user_removal_during_an_outage_complete_upstream_after_recovery(
    client, runtime, make_tenant, up
):
    with proxy_to(up.url) as proxy:
        world = await build_gateway_world(client, runtime, make_tenant, up, proxy.url)
        lender, lender_up = world.lender.local, world.lender.upstream
        cc = (await _token(client, lender, grant_type="client_credentials")).json()
        user = await _token(client, lender, grant_type=EXCHANGE, subject_token_type=USER, subject_token=world.user_id)
        assert user.status_code == 200, user.text
        user_tokens = user.json()

        proxy.mode = "reset"  # the upstream goes away
        revoked = await client.post("/oauth/revoke", json={"token": cc["refresh_token"]}, headers=lender.headers)
        assert revoked.status_code == 200, revoked.text
        removed = await client.post("/user/remove", json={"user_id": world.user_id}, headers=lender.headers)
        assert removed.status_code == 200, removed.text

        # Locally both took effect at once, without the upstream.
        hits = proxy.count()
        for token in (cc["access_token"], user_tokens["access_token"]):
            described = await client.post("/oauth/introspect", json={"token": token}, headers=lender.headers)
            assert described.json()["active"] is False
        refused = await _token(client, lender, grant_type="refresh_token", refresh_token=user_tokens["refresh_token"])
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
        assert proxy.count() == hits
        # Upstream, the tokens still live: the calls wait in the outbox.
        assert (await up.introspect(lender_up, cc["access_token"]))["active"] is True
        assert (await up.introspect(lender_up, user_tokens["access_token"]))["active"] is True
        assert await _pending(runtime, lender.tenant_id) == 2

        # Still down: a worker pass (another replica's runtime) retries, opens its circuit, and keeps them.
        worker = build_runtime(Settings(upstream_breaker_failures=2, upstream_breaker_open_seconds=0.2))
        try:
            later = datetime.now(UTC) + timedelta(hours=1)
            assert await calls.run_once(worker, now=later) == 2
            assert await _pending(runtime, lender.tenant_id) == 2
            assert worker.upstreams.breaker.state(proxy.url) == "open"

            proxy.mode = "pass"  # recovery
            await asyncio.sleep(0.3)  # the circuit half-opens; passes go on until the outbox is empty
            for step in range(1, 5):
                await calls.run_once(worker, now=later + timedelta(hours=step))
                if await _pending(runtime, lender.tenant_id) == 0:
                    break
        finally:
            await worker.close()
        assert await _pending(runtime, lender.tenant_id) == 0
        assert (await up.introspect(lender_up, cc["access_token"]))["active"] is False
        assert (await up.introspect(lender_up, user_tokens["access_token"]))["active"] is False
        gone = await up.post("/user/get", lender_up, user_id=world.user_id)
        assert gone.status_code == 400
        assert gone.json()["error_code"] == "USER_NOT_FOUND"


async def test_concurrent_refreshes_through_the_gateway_call_the_upstream_once(
    live_server, client, runtime, make_tenant, up
):
    with proxy_to(up.url) as proxy:
        world = await build_gateway_world(client, runtime, make_tenant, up, proxy.url)
        lender = world.lender.local
        current = (await _token(client, lender, grant_type="client_credentials")).json()
        async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
            for _round in range(2):
                before = proxy.count("/oauth/token")
                responses = await asyncio.gather(
                    *(
                        http.post(
                            "/oauth/token",
                            json={"grant_type": "refresh_token", "refresh_token": current["refresh_token"]},
                            headers=lender.headers,
                        )
                        for _ in range(12)
                    )
                )
                assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
                pairs = {(r.json()["access_token"], r.json()["refresh_token"]) for r in responses}
                assert len(pairs) == 1
                assert proxy.count("/oauth/token") == before + 1
                parent = tokens.digest(runtime.ring.hash_key, current["refresh_token"])
                async with runtime.sessions() as session:
                    parent_id = await session.scalar(select(RefreshToken.id).where(RefreshToken.digest == parent))
                    successors = await session.scalar(
                        select(func.count()).select_from(RefreshToken).where(RefreshToken.parent_id == parent_id)
                    )
                assert successors == 1
                current = responses[0].json()


async def test_concurrent_exchanges_and_forks_through_the_gateway_each_get_their_own_grant(
    live_server, client, runtime, make_tenant, up
):
    world = await build_gateway_world(client, runtime, make_tenant, up, up.url)
    lender, partner = world.lender.local, world.partner_a.local
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        shares = await asyncio.gather(
            *(
                http.post(
                    "/oauth/token",
                    json={
                        "grant_type": EXCHANGE,
                        "subject_token_type": MULTI,
                        "subject_token": world.user_id,
                        "audience": world.urn_a,
                    },
                    headers=lender.headers,
                )
                for _ in range(6)
            )
        )
        assert all(r.status_code == 200 for r in shares), [r.text for r in shares if r.status_code != 200]
        assert len({r.json()["refresh_token"] for r in shares}) == 6
        shared = shares[0].json()["refresh_token"]
        forks = await asyncio.gather(
            *(
                http.post(
                    "/oauth/token",
                    json={"grant_type": "refresh_token", "refresh_token": shared},
                    headers=partner.headers,
                )
                for _ in range(6)
            )
        )
    assert all(r.status_code == 200 for r in forks), [r.text for r in forks if r.status_code != 200]
    assert len({r.json()["refresh_token"] for r in forks}) == 6
    for fork in forks:
        assert (await up.introspect(world.partner_a.upstream, fork.json()["access_token"]))["active"] is True
    async with runtime.sessions() as session:
        parties = await session.scalar(
            select(func.count())
            .select_from(Grant)
            .where(Grant.kind == "party", Grant.holder_tenant_id == partner.tenant_id)
        )
    assert parties == 6


async def test_revoke_racing_refreshes_through_the_gateway_leaves_nothing_live_here_or_upstream(
    live_server, client, runtime, make_tenant, up
):
    world = await build_gateway_world(client, runtime, make_tenant, up, up.url)
    lender, lender_up = world.lender.local, world.lender.upstream
    issued = (await _token(client, lender, grant_type="client_credentials")).json()
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        refresh = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
        calls_ = [http.post("/oauth/token", json=refresh, headers=lender.headers) for _ in range(6)]
        calls_.insert(3, http.post("/oauth/revoke", json={"token": issued["refresh_token"]}, headers=lender.headers))
        responses = await asyncio.gather(*calls_)
    assert responses[3].status_code == 200
    refreshed = [r for i, r in enumerate(responses) if i != 3]
    assert all(
        r.status_code == 200 or (r.status_code == 400 and r.json()["error"] == "invalid_grant") for r in refreshed
    ), [r.text for r in refreshed]
    access_tokens = {issued["access_token"]} | {r.json()["access_token"] for r in refreshed if r.status_code == 200}
    for _ in range(5):  # drain the outbox (the revocation, and any undo of a refresh that lost the race)
        if await _pending(runtime, lender.tenant_id) == 0:
            break
        await calls.run_once(runtime, now=datetime.now(UTC) + timedelta(hours=1))
    assert await _pending(runtime, lender.tenant_id) == 0
    for token in access_tokens:
        described = await client.post("/oauth/introspect", json={"token": token}, headers=lender.headers)
        assert described.json()["active"] is False
        assert (await up.introspect(lender_up, token))["active"] is False
