"""Graceful shutdown: SIGTERM to ``broker serve`` lets an in-flight request answer and an in-flight
webhook delivery finish and be recorded, then the server exits cleanly.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import uuid

import httpx
import pytest
from sqlalchemy import text

from broker.client import AsyncAdminClient
from tests.admin_helpers import issue_key
from tests.conftest import serve
from tests.oauth_helpers import EXCHANGE, MULTI
from tests.webhook_helpers import Receiver, Reply, delete_endpoints, wait_until

SERVED = {"BROKER_WEBHOOK_WORKER": "true", "BROKER_WEBHOOK_POLL_SECONDS": "0.05", "BROKER_WORKERS": "1"}


async def _exit_code(process: subprocess.Popen[bytes]) -> int:
    return await asyncio.to_thread(process.wait, 60)


@pytest.mark.timeout(120)
async def test_sigterm_lets_an_in_flight_request_answer(make_tenant, sessions):
    lender = await make_tenant("shutdown lender")
    with serve({"BROKER_WORKERS": "1"}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            issued = await http.post("/oauth/token", json={"grant_type": "client_credentials"}, headers=lender.headers)
            assert issued.status_code == 200
            async with sessions() as session, session.begin():
                # hold the refresh token's row: the refresh below waits on it, in flight
                await session.execute(
                    text("SELECT 1 FROM refresh_tokens WHERE tenant_id = :t FOR UPDATE"), {"t": lender.tenant_id}
                )
                refresh = asyncio.create_task(
                    http.post(
                        "/oauth/token",
                        json={"grant_type": "refresh_token", "refresh_token": issued.json()["refresh_token"]},
                        headers=lender.headers,
                    )
                )
                await asyncio.sleep(0.5)
                assert not refresh.done()
                server.process.terminate()
                await asyncio.sleep(0.5)
                assert server.process.poll() is None  # still draining
            response = await asyncio.wait_for(refresh, 30)  # the lock is released: the request finishes
        assert response.status_code == 200, response.text
        assert response.json()["refresh_token"].startswith("pdr-")
        assert await _exit_code(server.process) == 0


@pytest.mark.timeout(120)
async def test_sigterm_lets_an_in_flight_webhook_delivery_finish_and_be_recorded(runtime):
    receiver = Receiver(lambda _n, _r: Reply(delay=1.5)).start()
    _, key = await issue_key(runtime)
    endpoint_id = None
    try:
        with serve(SERVED) as server:
            async with AsyncAdminClient(server.url, key) as admin:
                lender = await admin.create_tenant("shutdown lender")
                partner = await admin.create_tenant("shutdown partner", kind="partner")
                urn = f"urn:test:shutdown:{secrets.token_hex(4)}"
                await admin.create_audience(urn, "Shutdown")
                await admin.add_audience_member(urn, partner.client_id)
                await admin.put_policy(lender.client_id, urn)
                endpoint_id = (await admin.create_webhook_endpoint(receiver.url, client_id=partner.client_id)).id
            assert lender.secret is not None
            headers = {"PLAID-CLIENT-ID": lender.client_id, "PLAID-SECRET": lender.secret}
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                user = (await http.post("/user/create", json={"client_user_id": "shutdown"}, headers=headers)).json()
                shared = await http.post(
                    "/oauth/token",
                    json={
                        "grant_type": EXCHANGE,
                        "subject_token": user["user_id"],
                        "subject_token_type": MULTI,
                        "audience": urn,
                    },
                    headers=headers,
                )
                assert shared.status_code == 200, shared.text
            await wait_until(receiver.events, within=15)  # the post is in flight (the receiver takes 1.5 s)
            server.process.terminate()
            assert await _exit_code(server.process) == 0
        async with runtime.sessions() as session:
            statuses = (
                await session.execute(
                    text("SELECT status FROM webhook_deliveries WHERE endpoint_id = :e"), {"e": uuid.UUID(endpoint_id)}
                )
            ).scalars()
            assert list(statuses) == ["delivered"]
        assert len(receiver.requests) == 1
    finally:
        receiver.close()
        if endpoint_id is not None:
            await delete_endpoints(runtime, [uuid.UUID(endpoint_id)])
