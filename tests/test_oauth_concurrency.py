"""Real parallel requests against a live broker (granian, two worker processes)."""

from __future__ import annotations

import asyncio
import os

import httpx
from sqlalchemy import func, select

from broker.crypto import tokens
from broker.db.models import Grant, RefreshToken
from tests.oauth_helpers import EXCHANGE, MULTI, OAUTH_USER, USER, build_world

# `make chaos` runs the full figures: 50 concurrent refreshes, 20 rounds.
PARALLEL = int(os.environ.get("BROKER_CHAOS_PARALLEL", "40"))
ROUNDS = int(os.environ.get("BROKER_CHAOS_REFRESH_ROUNDS", "5"))


async def _post(http: httpx.AsyncClient, path: str, creds, **body):
    return await http.post(path, json=body, headers=creds.headers)


async def test_concurrent_refreshes_of_one_token_yield_exactly_one_pair(live_server, make_tenant, sessions, runtime):
    lender = await make_tenant()
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        current = (await _post(http, "/oauth/token", lender, grant_type="client_credentials")).json()
        for _round in range(ROUNDS):
            responses = await asyncio.gather(
                *(
                    _post(
                        http, "/oauth/token", lender, grant_type="refresh_token", refresh_token=current["refresh_token"]
                    )
                    for _ in range(PARALLEL)
                )
            )
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
            pairs = {(r.json()["access_token"], r.json()["refresh_token"]) for r in responses}
            assert len(pairs) == 1
            parent = tokens.digest(runtime.ring.hash_key, current["refresh_token"])
            async with sessions() as session:
                parent_id = await session.scalar(select(RefreshToken.id).where(RefreshToken.digest == parent))
                successors = await session.scalar(
                    select(func.count()).select_from(RefreshToken).where(RefreshToken.parent_id == parent_id)
                )
            assert successors == 1
            current = responses[0].json()


async def test_concurrent_exchanges_of_one_user_all_succeed_independently(live_server, client, make_tenant, sessions):
    world = await build_world(client, sessions, make_tenant)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        responses = await asyncio.gather(
            *(
                _post(
                    http,
                    "/oauth/token",
                    world.lender,
                    grant_type=EXCHANGE,
                    subject_token=world.user["user_token"],
                    subject_token_type=MULTI,
                    audience=f"{world.urn_a},{world.urn_b}",
                )
                for _ in range(PARALLEL)
            )
        )
    assert all(r.status_code == 200 for r in responses)
    assert len({r.json()["refresh_token"] for r in responses}) == PARALLEL
    async with sessions() as session:
        grants = await session.scalar(
            select(func.count())
            .select_from(Grant)
            .where(Grant.tenant_id == world.lender.tenant_id, Grant.kind == "multi_party")
        )
    assert grants == PARALLEL


async def test_revoke_racing_refreshes_and_exchanges_leaves_no_live_descendant(
    live_server, client, make_tenant, sessions
):
    world = await build_world(client, sessions, make_tenant)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        root = (
            await _post(
                http,
                "/oauth/token",
                world.lender,
                grant_type=EXCHANGE,
                subject_token=world.user["user_id"],
                subject_token_type=USER,
                audience=world.lender.client_id,
            )
        ).json()
        shared = (
            await _post(
                http,
                "/oauth/token",
                world.lender,
                grant_type=EXCHANGE,
                subject_token=world.user["user_id"],
                subject_token_type=MULTI,
                audience=world.urn_a,
            )
        ).json()

        async def churn_exchange():
            return await _post(
                http,
                "/oauth/token",
                world.lender,
                grant_type=EXCHANGE,
                subject_token=root["refresh_token"],
                subject_token_type=OAUTH_USER,
                audience=world.other.client_id,
            )

        async def churn_fork():
            return await _post(
                http, "/oauth/token", world.partner_a, grant_type="refresh_token", refresh_token=shared["refresh_token"]
            )

        async def revoke_all():
            await asyncio.sleep(0.01)
            first = await _post(http, "/oauth/revoke", world.lender, token=root["refresh_token"])
            second = await _post(http, "/oauth/revoke", world.lender, token=shared["refresh_token"])
            return first, second

        jobs = [churn_exchange() for _ in range(PARALLEL // 2)] + [churn_fork() for _ in range(PARALLEL // 2)]
        results = await asyncio.gather(*jobs, revoke_all())
        issued = [r for r in results[:-1] if r.status_code == 200]
        assert all(r.status_code in (200, 400) for r in results[:-1])
        assert all(r.status_code == 200 for r in results[-1])
        # every token that was handed out, before or after the revocation, is dead now
        for response in issued:
            holder = world.other if "issued_token_type" in response.json() else world.partner_a
            for token in (response.json()["access_token"], response.json()["refresh_token"]):
                info = await _post(http, "/oauth/introspect", holder, token=token)
                assert info.json()["active"] is False
            refreshed = await _post(
                http, "/oauth/token", holder, grant_type="refresh_token", refresh_token=response.json()["refresh_token"]
            )
            assert refreshed.json()["error"] == "invalid_grant"
