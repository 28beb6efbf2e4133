"""Gateway mode end to end, against a real upstream: a second broker in issuer mode on its own port and database."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from broker.db.models import AuditEvent, TenantUpstream
from broker.gateway import calls, upstreams
from tests.admin_helpers import bearer, issue_key
from tests.gateway_helpers import (
    EXCHANGE,
    MULTI,
    OAUTH_USER,
    USER,
    GatewayWorld,
    UpstreamBroker,
    build_gateway_world,
    held_upstream_tokens,
    proxy_to,
    set_upstream,
    upstream_broker,
)
from tests.oauth_helpers import add_member


@pytest.fixture(scope="module")
async def up() -> AsyncIterator[UpstreamBroker]:
    async with upstream_broker() as broker:
        yield broker


async def _token(client: Any, creds: Any, **params: Any) -> Any:
    return await client.post("/oauth/token", json=params, headers=creds.headers)


async def _ok(client: Any, creds: Any, seen: list[dict[str, Any]] | None = None, **params: Any) -> dict[str, Any]:
    response = await _token(client, creds, **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    if seen is not None:
        seen.append(body)
    return body


async def _introspect(client: Any, creds: Any, token: str) -> dict[str, Any]:
    response = await client.post("/oauth/introspect", json={"token": token}, headers=creds.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _revoke(client: Any, creds: Any, token: str) -> None:
    response = await client.post("/oauth/revoke", json={"token": token}, headers=creds.headers)
    assert response.status_code == 200, response.text


async def test_admin_api_sets_shows_and_removes_an_upstream_and_never_returns_its_secret(client, runtime, make_tenant):
    _, key = await issue_key(runtime)
    tenant = await make_tenant("gateway tenant")
    secret = f"plaid-secret-{secrets.token_hex(12)}"
    path = f"/admin/v1/tenants/{tenant.client_id}/upstream"
    body = {"base_url": "https://sandbox.plaid.com/", "client_id": "upstream-client", "secret": secret}

    response = await client.put(path, json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    shown = response.json()
    assert shown["base_url"] == "https://sandbox.plaid.com"
    assert (shown["client_id"], shown["mode"], shown["tenant"]) == ("upstream-client", "held", tenant.client_id)
    assert shown["secret_fingerprint"].startswith("hmac-sha256:")
    read = await client.get(path, headers=bearer(key))
    assert read.status_code == 200
    for text in (response.text, read.text):
        assert secret not in text
        assert "secret" not in {k for k in json.loads(text) if k != "secret_fingerprint"}

    for bad, message in (
        ({**body, "base_url": "ftp://sandbox.plaid.com"}, "base_url"),
        ({**body, "base_url": "https://user:pw@sandbox.plaid.com"}, "base_url"),
        ({**body, "mode": "sideways"}, "mode"),
        ({**body, "secret": ""}, "secret"),
    ):
        refused = await client.put(path, json=bad, headers=bearer(key))
        assert refused.status_code == 422, refused.text
        assert message in refused.json()["error"]["message"]
    missing = await client.put("/admin/v1/tenants/nobody-here/upstream", json=body, headers=bearer(key))
    assert missing.status_code == 404

    async with runtime.sessions() as session:
        stored = await session.scalar(
            select(TenantUpstream.secret_enc).where(TenantUpstream.tenant_id == tenant.tenant_id)
        )
        events = list(
            (await session.execute(select(AuditEvent).where(AuditEvent.tenant_id == tenant.tenant_id))).scalars()
        )
    assert stored is not None
    assert stored.startswith("v2.")
    assert secret not in stored
    assert "tenant.upstream_set" in {e.action for e in events}
    assert all(secret not in json.dumps(e.detail) for e in events)

    deleted = await client.delete(path, headers=bearer(key))
    assert deleted.status_code == 204
    assert (await client.get(path, headers=bearer(key))).status_code == 404
    assert (await client.delete(path, headers=bearer(key))).status_code == 404


async def _story(client: Any, world: GatewayWorld, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """The lender → partner story through the gateway; returns the tokens it produced."""
    lender, other, partner_a, partner_b = (
        p.local for p in (world.lender, world.other, world.partner_a, world.partner_b)
    )
    cc = await _ok(client, lender, seen, grant_type="client_credentials")
    user = await _ok(
        client,
        lender,
        seen,
        grant_type=EXCHANGE,
        subject_token_type=USER,
        subject_token=world.user_id,
        scope="user:read exchange",
    )
    assert user["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    exchanged = await _ok(
        client,
        lender,
        seen,
        grant_type=EXCHANGE,
        subject_token_type=OAUTH_USER,
        subject_token=user["refresh_token"],
        audience=other.client_id,
    )
    other_tokens = await _ok(client, other, seen, grant_type="refresh_token", refresh_token=exchanged["refresh_token"])
    shared = await _ok(
        client,
        lender,
        seen,
        grant_type=EXCHANGE,
        subject_token_type=MULTI,
        subject_token=world.user_id,
        audience=f"{world.urn_a}, {world.urn_b}",
    )
    party_a = await _ok(client, partner_a, seen, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    party_b = await _ok(client, partner_b, seen, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    rotated = await _ok(client, partner_a, seen, grant_type="refresh_token", refresh_token=party_a["refresh_token"])
    assert rotated["refresh_token"] != party_a["refresh_token"]
    retried = await _ok(client, partner_a, None, grant_type="refresh_token", refresh_token=party_a["refresh_token"])
    assert (retried["access_token"], retried["refresh_token"]) == (rotated["access_token"], rotated["refresh_token"])
    return {
        "cc": cc,
        "user": user,
        "exchanged": exchanged,
        "other": other_tokens,
        "shared": shared,
        "party_a": rotated,
        "party_b": party_b,
    }


async def test_held_mode_serves_the_lender_to_partner_story_and_never_hands_out_an_upstream_refresh_token(
    client, runtime, make_tenant, up
):
    world = await build_gateway_world(client, runtime, make_tenant, up, up.url, mode="held")
    seen: list[dict[str, Any]] = []
    got = await _story(client, world, seen)

    # Partners get the upstream's access tokens: they work at the upstream with their own upstream credentials.
    assert (await up.introspect(world.partner_a.upstream, got["party_a"]["access_token"]))["active"] is True
    assert (await up.introspect(world.other.upstream, got["other"]["access_token"]))["active"] is True
    # Introspection through the gateway: upstream tokens are answered by the upstream, broker tokens locally.
    described = await _introspect(client, world.partner_a.local, got["party_a"]["access_token"])
    assert described["active"] is True
    assert described["client_id"] == world.partner_a.upstream.client_id
    local = await _introspect(client, world.partner_a.local, got["party_a"]["refresh_token"])
    assert (local["active"], local["token_type"]) == (True, "refresh_token")
    assert (await _introspect(client, world.lender.local, got["party_a"]["access_token"]))["active"] is True

    held = await held_upstream_tokens(runtime)
    assert held
    for body in seen:
        assert body["refresh_token"] not in held
        assert body["refresh_token"].startswith("pdr-")
    # The broker refresh tokens mean nothing to the upstream.
    assert (await up.introspect(world.lender.upstream, got["cc"]["refresh_token"]))["active"] is False

    # The lender revokes the shared token: every party's lineage dies, here and at the upstream.
    await _revoke(client, world.lender.local, got["shared"]["refresh_token"])
    assert (await _introspect(client, world.partner_a.local, got["party_a"]["access_token"]))["active"] is False
    assert (await up.introspect(world.partner_a.upstream, got["party_a"]["access_token"]))["active"] is False
    assert (await up.introspect(world.partner_b.upstream, got["party_b"]["access_token"]))["active"] is False
    refused = await _token(
        client, world.partner_a.local, grant_type="refresh_token", refresh_token=got["party_a"]["refresh_token"]
    )
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
    # Unrelated grants live on.
    assert (await up.introspect(world.other.upstream, got["other"]["access_token"]))["active"] is True


async def test_transparent_mode_returns_the_upstream_tokens_and_still_applies_local_policy(
    client, runtime, make_tenant, up
):
    world = await build_gateway_world(client, runtime, make_tenant, up, up.url, mode="transparent")
    seen: list[dict[str, Any]] = []
    got = await _story(client, world, seen)

    # The caller holds the upstream's own tokens: the upstream recognises them.
    assert (await up.introspect(world.lender.upstream, got["cc"]["refresh_token"]))["active"] is True
    assert (await up.introspect(world.partner_a.upstream, got["party_a"]["refresh_token"]))["active"] is True
    held = await held_upstream_tokens(runtime)
    assert got["cc"]["refresh_token"] in held
    # ... and the gateway keeps applying local policy: a non-party is refused without asking the upstream.
    refused = await _token(
        client, world.lender.local, grant_type="refresh_token", refresh_token=got["party_a"]["refresh_token"]
    )
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")

    await _revoke(client, world.partner_a.local, got["party_a"]["refresh_token"])
    assert (await up.introspect(world.partner_a.upstream, got["party_a"]["refresh_token"]))["active"] is False
    assert (await _introspect(client, world.partner_a.local, got["party_a"]["access_token"]))["active"] is False
    # Partner B's share is untouched.
    assert (await up.introspect(world.partner_b.upstream, got["party_b"]["access_token"]))["active"] is True


async def test_policy_refusals_never_reach_the_upstream(client, runtime, make_tenant, up):
    with proxy_to(up.url) as proxy:
        world = await build_gateway_world(client, runtime, make_tenant, up, proxy.url)
        shared = await _ok(
            client,
            world.lender.local,
            grant_type=EXCHANGE,
            subject_token_type=MULTI,
            subject_token=world.user_id,
            audience=world.urn_a,
        )
        before = proxy.count()
        cases = [
            (
                world.lender.local,
                {
                    "grant_type": EXCHANGE,
                    "subject_token_type": MULTI,
                    "subject_token": world.user_id,
                    "audience": f"{world.urn_a},urn:test:cra-partner:nobody-allowed",
                },
                "invalid_target",
            ),
            (
                world.lender.local,
                {
                    "grant_type": EXCHANGE,
                    "subject_token_type": MULTI,
                    "subject_token": world.user_id,
                    "audience": world.partner_b.local.client_id,
                },
                "invalid_target",
            ),
            (
                world.lender.local,
                {"grant_type": "client_credentials", "scope": "user:read admin:everything"},
                "invalid_scope",
            ),
            (
                world.partner_b.local,
                {"grant_type": "refresh_token", "refresh_token": shared["refresh_token"]},
                "invalid_grant",
            ),
            (world.lender.local, {"grant_type": "refresh_token", "refresh_token": "pdr-not-a-token"}, "invalid_grant"),
            (world.lender.local, {"grant_type": "password"}, "unsupported_grant_type"),
        ]
        for creds, params, error in cases:
            response = await _token(client, creds, **params)
            assert response.status_code == 400, response.text
            assert response.json()["error"] == error, (params, response.text)
        bad_secret = type(world.lender.local)(world.lender.local.client_id, "wrong", world.lender.local.tenant_id)
        assert (await _token(client, bad_secret, grant_type="client_credentials")).status_code == 401
        # A non-party's revocation is refused locally and not forwarded.
        await _revoke(client, world.other.local, shared["refresh_token"])
        assert proxy.count() == before
        assert (await _introspect(client, world.partner_a.local, shared["refresh_token"]))["active"] is True


async def test_upstream_refusals_are_relayed_with_our_request_id_and_audited_with_theirs(
    client, runtime, make_tenant, up
):
    world = await build_gateway_world(client, runtime, make_tenant, up, up.url)
    response = await _token(
        client, world.lender.local, grant_type=EXCHANGE, subject_token_type=USER, subject_token="usr_nobodyatall"
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["error_description"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert response.headers["cache-control"] == "no-store"
    async with runtime.sessions() as session:
        event = await session.scalar(
            select(AuditEvent).where(
                AuditEvent.request_id == body["request_id"], AuditEvent.action == "token.upstream_refused"
            )
        )
    assert event is not None
    assert event.outcome == "denied"
    assert event.detail["upstream_request_id"] not in {None, body["request_id"]}
    assert event.detail["status"] == 400

    # A Plaid error from a user endpoint keeps Plaid's shape.
    missing = await client.post("/user/get", json={"user_id": "usr_nobodyatall"}, headers=world.lender.local.headers)
    assert missing.status_code == 400, missing.text
    plaid = missing.json()
    assert (plaid["error_type"], plaid["error_code"]) == ("USER_ERROR", "USER_NOT_FOUND")
    assert plaid["request_id"] == missing.headers["x-request-id"]
    found = await client.post("/user/get", json={"user_id": world.user_id}, headers=world.lender.local.headers)
    assert found.status_code == 200, found.text
    assert found.json()["user_id"] == world.user_id


async def test_wrong_upstream_credentials_are_a_gateway_error_not_the_callers_invalid_client(
    client, runtime, make_tenant, up
):
    tenant = await make_tenant("misconfigured gateway")
    wrong = type(tenant)("not-a-client-there", "wrong-secret-value", tenant.tenant_id)
    await set_upstream(runtime, tenant, wrong, up.url, "held")
    response = await _token(client, tenant, grant_type="client_credentials")
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["error"] == "server_error"
    assert "upstream credentials" in body["error_description"]
    assert "wrong-secret-value" not in response.text
    assert "retry-after" in response.headers


async def test_a_replayed_broker_refresh_token_revokes_the_family_here_and_upstream(client, runtime, make_tenant, up):
    world = await build_gateway_world(client, runtime, make_tenant, up, up.url, mode="held")
    lender = world.lender.local
    first = await _ok(client, lender, grant_type="client_credentials")
    second = await _ok(client, lender, grant_type="refresh_token", refresh_token=first["refresh_token"])
    third = await _ok(client, lender, grant_type="refresh_token", refresh_token=second["refresh_token"])
    assert (await up.introspect(world.lender.upstream, third["access_token"]))["active"] is True
    held = await held_upstream_tokens(runtime)

    replayed = await _token(client, lender, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert (replayed.status_code, replayed.json()["error"]) == (400, "invalid_grant")
    assert (await _introspect(client, lender, third["access_token"]))["active"] is False
    # The held upstream token is revoked upstream through the outbox (a worker pass here).
    assert await calls.run_once(runtime) >= 1
    assert (await up.introspect(world.lender.upstream, third["access_token"]))["active"] is False
    assert held  # the upstream tokens broker held were never the ones handed out
    assert not {first["refresh_token"], second["refresh_token"], third["refresh_token"]} & held


async def test_an_operator_revoking_a_gateway_grant_or_removing_a_party_also_revokes_upstream(
    client, runtime, make_tenant, up
):
    world = await build_gateway_world(client, runtime, make_tenant, up, up.url, mode="held")
    _, key = await issue_key(runtime)
    lender, partner_a, partner_b = world.lender.local, world.partner_a.local, world.partner_b.local
    shared = await _ok(
        client,
        lender,
        grant_type=EXCHANGE,
        subject_token_type=MULTI,
        subject_token=world.user_id,
        audience=f"{world.urn_a},{world.urn_b}",
    )
    party_a = await _ok(client, partner_a, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    party_b = await _ok(client, partner_b, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    shared_grant = (await _introspect(client, lender, shared["refresh_token"]))["active"]
    assert shared_grant is True
    async with runtime.sessions() as session:
        grant_id = await session.scalar(
            select(AuditEvent.grant_id).where(
                AuditEvent.request_id == shared["request_id"], AuditEvent.action == "token.exchanged"
            )
        )
    assert grant_id is not None

    removed = await client.delete(f"/admin/v1/grants/{grant_id}/parties/{partner_a.client_id}", headers=bearer(key))
    assert removed.status_code == 200, removed.text
    assert await calls.run_once(runtime) >= 1
    assert (await up.introspect(world.partner_a.upstream, party_a["access_token"]))["active"] is False
    assert (await up.introspect(world.partner_b.upstream, party_b["access_token"]))["active"] is True

    revoked = await client.post(f"/admin/v1/grants/{grant_id}/revoke", headers=bearer(key))
    assert revoked.status_code == 200, revoked.text
    assert await calls.run_once(runtime) >= 1
    assert (await up.introspect(world.partner_b.upstream, party_b["access_token"]))["active"] is False


async def test_parties_must_have_an_identity_at_the_upstream_and_local_flows_never_refresh_gateway_grants(
    client, runtime, make_tenant, up
):
    with proxy_to(up.url) as proxy:
        world = await build_gateway_world(client, runtime, make_tenant, up, proxy.url)
        lender = world.lender.local
        # A partner in issuer mode behind an allowed URN cannot be a party of an upstream grant.
        local_partner = await make_tenant("issuer-mode partner", kind="partner")
        await add_member(runtime.sessions, world.urn_b, local_partner.tenant_id)
        before = proxy.count()
        refused = await _token(
            client,
            lender,
            grant_type=EXCHANGE,
            subject_token_type=MULTI,
            subject_token=world.user_id,
            audience=world.urn_b,
        )
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_target"), refused.text
        assert proxy.count() == before

        shared = await _ok(
            client,
            lender,
            grant_type=EXCHANGE,
            subject_token_type=MULTI,
            subject_token=world.user_id,
            audience=world.urn_a,
        )
        own = await _ok(client, lender, grant_type="client_credentials")
        # Both tenants go back to issuer mode: what the upstream issued can no longer be refreshed here
        # (neither by the hot path nor by the full flow), and nothing is minted locally for it.
        for tenant in (lender, world.partner_a.local):
            async with runtime.sessions() as session, session.begin():
                await upstreams.delete_upstream(session, tenant.client_id, actor="test", request_id=None)
        hits = proxy.count()
        for creds, token in ((world.partner_a.local, shared["refresh_token"]), (lender, own["refresh_token"])):
            response = await _token(client, creds, grant_type="refresh_token", refresh_token=token)
            assert (response.status_code, response.json()["error"]) == (400, "invalid_grant"), response.text
        assert proxy.count() == hits
