"""broker.client against a live broker (granian, two workers): the admin API and a partner's OAuth calls."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import uuid

import httpx
import pytest

from broker.client import (
    AdminClient,
    AsyncAdminClient,
    AsyncPartnerClient,
    BrokerAPIError,
    PartnerClient,
    TokenResponse,
)
from tests.admin_helpers import issue_key
from tests.oauth_helpers import EXCHANGE, MULTI
from tests.webhook_helpers import delete_endpoints


def test_the_client_imports_no_server_code():
    code = (
        "import sys, broker.client\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('litestar', 'sqlalchemy', 'asyncpg', 'msgspec')"
        " or (m.startswith('broker.') and not m.startswith('broker.client'))]\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _admin_flow(url: str, key: str) -> dict[str, str]:
    """The operator's side with the sync client: tenants, audience, policy, an endpoint and its deliveries."""
    with AdminClient(url, key) as admin:
        lender = admin.create_tenant("client-test lender")
        partner = admin.create_tenant("client-test partner", kind="partner")
        assert lender.secret
        assert partner.secret
        assert "secret" not in repr(lender)
        assert admin.get_tenant(partner.client_id).kind == "partner"
        urn = f"urn:test:client:{secrets.token_hex(4)}"
        audience = admin.create_audience(urn, "Client test")
        assert audience.members == ()
        assert admin.add_audience_member(urn, partner.client_id).members == (partner.client_id,)
        policy = admin.put_policy(lender.client_id, urn, webhook_include_refresh_token=True)
        assert policy.webhook_include_refresh_token is True
        assert policy.target_kind == "audience"

        endpoint = admin.create_webhook_endpoint(
            "https://partner.example/hooks", client_id=partner.client_id, description="client test"
        )
        assert endpoint.secret is not None
        assert endpoint.secret.startswith("whsec_")
        assert "whsec_" not in repr(endpoint)
        assert [e.id for e in admin.list_webhook_endpoints(client_id=partner.client_id)] == [endpoint.id]
        fetched = admin.get_webhook_endpoint(endpoint.id)
        assert fetched.secret is None
        assert fetched.events == ("grant.revoked", "grant.shared", "party.removed", "user.removed")
        paused = admin.update_webhook_endpoint(endpoint.id, enabled=False, clear_description=True)
        assert paused.enabled is False
        assert paused.description is None
        rotated = admin.rotate_webhook_secret(endpoint.id, overlap_seconds=60)
        assert rotated.secret not in (None, endpoint.secret)
        assert rotated.previous_secret_expires_at is not None

        test = admin.send_test_webhook(endpoint.id)
        assert (test.event_type, test.status) == ("webhook.test", "pending")
        page = admin.list_webhook_deliveries(endpoint_id=endpoint.id, limit=10)
        assert [d.id for d in page.data] == [test.id]
        assert page.next_after is None
        assert admin.get_webhook_delivery(test.id).attempts == ()
        assert admin.redeliver_webhook(test.id).status == "pending"
        assert admin.redeliver_dead_webhooks(endpoint_id=endpoint.id) == 0

        with pytest.raises(BrokerAPIError) as refused:
            admin.create_webhook_endpoint("ftp://nope", client_id=partner.client_id)
        assert refused.value.status_code == 422
        assert refused.value.code == "validation_failed"
        assert "http:// or https://" in refused.value.message
        assert refused.value.request_id
        with pytest.raises(BrokerAPIError) as missing:
            admin.get_webhook_delivery("no-such-delivery")
        assert missing.value.code == "not_found"
        assert admin.request("GET", f"/webhook-endpoints/{endpoint.id}")["id"] == endpoint.id
    assert lender.secret is not None
    assert partner.secret is not None
    return {
        "lender_id": lender.client_id,
        "lender_secret": lender.secret,
        "partner_id": partner.client_id,
        "partner_secret": partner.secret,
        "urn": urn,
        "endpoint_id": endpoint.id,
    }


def _partner_flow(url: str, world: dict[str, str]) -> None:
    """The lender shares; the partner refreshes with its own credentials, introspects and withdraws."""
    lender_headers = {"PLAID-CLIENT-ID": world["lender_id"], "PLAID-SECRET": world["lender_secret"]}
    user = httpx.post(f"{url}/user/create", json={"client_user_id": "client-test"}, headers=lender_headers).json()
    with PartnerClient(url, world["lender_id"], world["lender_secret"]) as lender:
        shared = lender.token(
            EXCHANGE, subject_token=user["user_id"], subject_token_type=MULTI, audience=world["urn"], scope=None
        )
    assert isinstance(shared, TokenResponse)
    assert "pdr-" not in repr(shared)
    with PartnerClient(url, world["partner_id"], world["partner_secret"]) as partner:
        own = partner.refresh(shared.refresh_token)
        assert own.refresh_token != shared.refresh_token
        info = partner.introspect(own.access_token)
        assert info.active is True
        assert info.client_id == world["partner_id"]
        assert info.user_id == user["user_id"]
        rotated = partner.refresh(own.refresh_token, scope=info.scope.split() if info.scope else None)
        partner.revoke(shared.refresh_token)  # withdraw this partner's share
        assert partner.introspect(rotated.access_token).active is False
        with pytest.raises(BrokerAPIError) as refused:
            partner.refresh(rotated.refresh_token)
        assert refused.value.code == "invalid_grant"
        assert refused.value.status_code == 400
    with PartnerClient(url, world["partner_id"], "wrong-secret") as impostor, pytest.raises(BrokerAPIError) as bad:
        impostor.introspect(own.access_token)
    assert (bad.value.status_code, bad.value.code) == (401, "invalid_client")


async def test_sync_clients_against_a_live_broker(live_server, runtime):
    _, key = await issue_key(runtime)
    world = await asyncio.to_thread(_admin_flow, live_server.url, key)
    try:
        await asyncio.to_thread(_partner_flow, live_server.url, world)
    finally:
        await delete_endpoints(runtime, [uuid.UUID(world["endpoint_id"])])


async def test_async_clients_against_a_live_broker(live_server, runtime):
    _, key = await issue_key(runtime)
    async with AsyncAdminClient(live_server.url, key) as admin:
        lender = await admin.create_tenant("async lender")
        partner = await admin.create_tenant("async partner", kind="partner")
        assert lender.secret is not None
        assert partner.secret is not None
        urn = f"urn:test:client:{secrets.token_hex(4)}"
        await admin.create_audience(urn, "Async")
        await admin.add_audience_member(urn, partner.client_id)
        await admin.put_policy(lender.client_id, urn)
        endpoint = await admin.create_webhook_endpoint("https://x.example/h", client_id=partner.client_id)
        try:
            assert (await admin.get_webhook_endpoint(endpoint.id)).id == endpoint.id
            test = await admin.send_test_webhook(endpoint.id)
            assert (await admin.list_webhook_deliveries(endpoint_id=endpoint.id)).data[0].id == test.id
            with pytest.raises(BrokerAPIError):
                await admin.update_webhook_endpoint(endpoint.id, events=["nope"])
        finally:
            await admin.delete_webhook_endpoint(endpoint.id)
        assert await admin.list_webhook_endpoints(client_id=partner.client_id) == []

    async with httpx.AsyncClient(base_url=live_server.url) as http:
        user = (
            await http.post(
                "/user/create",
                json={"client_user_id": "async"},
                headers={"PLAID-CLIENT-ID": lender.client_id, "PLAID-SECRET": lender.secret},
            )
        ).json()
        async with AsyncPartnerClient(live_server.url, lender.client_id, lender.secret, http=http) as lending:
            shared = await lending.token(
                EXCHANGE, subject_token=user["user_id"], subject_token_type=MULTI, audience=urn
            )
        assert not http.is_closed  # a client passed in is left open
        async with AsyncPartnerClient(live_server.url, partner.client_id, partner.secret) as partnering:
            own = await partnering.refresh(shared.refresh_token)
            assert (await partnering.introspect(own.access_token)).active is True
            await partnering.revoke(shared.refresh_token)
            assert (await partnering.introspect(own.access_token)).active is False
