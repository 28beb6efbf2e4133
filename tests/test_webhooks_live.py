"""End to end on ``broker serve`` (granian, two processes, each running its delivery worker).

A partner registers, hears about a share through a signed webhook carrying the token, uses it with
its own credentials, and hears about the revocation; many events go out across both processes, each
exactly once; and the server stops cleanly with its workers.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
import uuid

import pytest

from broker.client import AsyncAdminClient, AsyncPartnerClient, WebhookVerifier
from tests.admin_helpers import issue_key
from tests.conftest import serve
from tests.oauth_helpers import EXCHANGE, MULTI
from tests.webhook_helpers import Receiver, delete_endpoints, wait_until

SERVED = {"BROKER_WEBHOOK_WORKER": "true", "BROKER_WEBHOOK_POLL_SECONDS": "0.05", "BROKER_WORKERS": "2"}


@pytest.fixture
def served():
    with serve(SERVED) as server:
        yield server
        _stop(server.process)


def _stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM and wait: the lifespan stops each delivery worker (in-flight posts may take a timeout)."""
    process.terminate()
    return process.wait(timeout=60)


async def test_a_partner_hears_about_a_share_uses_it_and_hears_about_the_revocation(served, runtime):
    receiver = Receiver().start()
    _, key = await issue_key(runtime)
    endpoint_ids = []
    try:
        async with AsyncAdminClient(served.url, key) as admin:
            lender = await admin.create_tenant("live lender")
            partner = await admin.create_tenant("live partner", kind="partner")
            assert lender.secret is not None
            assert partner.secret is not None
            urn = f"urn:test:live:{secrets.token_hex(4)}"
            await admin.create_audience(urn, "Live")
            await admin.add_audience_member(urn, partner.client_id)
            await admin.put_policy(lender.client_id, urn, webhook_include_refresh_token=True)
            endpoint = await admin.create_webhook_endpoint(receiver.url, client_id=partner.client_id)
            endpoint_ids.append(endpoint.id)
        assert endpoint.secret is not None
        verifier = WebhookVerifier(endpoint.secret)

        async with AsyncPartnerClient(served.url, lender.client_id, lender.secret) as lending:
            user = await lending._http.post(
                f"{served.url}/user/create", json={"client_user_id": "live"}, headers=lending._headers
            )
            shared = await lending.token(
                EXCHANGE, subject_token=user.json()["user_id"], subject_token_type=MULTI, audience=urn
            )
            (request,) = await wait_until(receiver.events, within=15)
            event = verifier.verify(request.body, request.headers)
            assert event.type == "grant.shared"
            token = event.data["refresh_token"]
            assert token == shared.refresh_token
            async with AsyncPartnerClient(served.url, partner.client_id, partner.secret) as partnering:
                own = await partnering.refresh(token)
                assert (await partnering.introspect(own.access_token)).active is True
                await lending.revoke(shared.refresh_token)
                revoked = await wait_until(lambda: receiver.events("grant.revoked"), within=15)
                event = verifier.verify(revoked[0].body, revoked[0].headers)
                assert len(event.data["revoked_grants"]) == 2  # the shared grant and the partner's lineage
                assert (await partnering.introspect(own.access_token)).active is False

            # a burst of shares: every event once, across both serving processes
            burst = 30
            for _ in range(burst):
                await lending.token(
                    EXCHANGE, subject_token=user.json()["user_id"], subject_token_type=MULTI, audience=urn
                )
            await wait_until(lambda: len(receiver.events("grant.shared")) >= burst + 1, within=30)
            await asyncio.sleep(0.3)
        shares = receiver.events("grant.shared")
        assert len(shares) == burst + 1
        assert len({r.event_id for r in shares}) == burst + 1
        assert receiver.max_in_flight_per_id == 1
    finally:
        receiver.close()
        await delete_endpoints(runtime, [uuid.UUID(i) for i in endpoint_ids])


def test_serve_stops_cleanly_with_its_workers(tmp_path):
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log, serve(SERVED, output=log) as server:
        deadline = time.monotonic() + 60
        while log_path.read_text().count("webhook worker started") < 2:  # both processes are up
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        assert _stop(server.process) == 0
    text = log_path.read_text()
    assert text.count("webhook worker started") == 2  # one per serving process
    assert text.count("webhook worker stopped") == 2  # stopped by the lifespan on SIGTERM
    assert "Traceback" not in text
