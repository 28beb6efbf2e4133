from __future__ import annotations

import pytest
from sqlalchemy import select, text, update

from broker.crypto import tokens
from broker.db.models import AccessToken, AuditEvent
from tests.oauth_helpers import EXCHANGE, MULTI, USER, build_world, introspect, token_ok


@pytest.fixture
async def world(client, sessions, make_tenant):
    return await build_world(client, sessions, make_tenant)


async def test_client_credentials_token_fields(client, make_tenant, settings):
    lender = await make_tenant()
    pair = await token_ok(client, lender, grant_type="client_credentials")
    info = await introspect(client, lender, pair["access_token"])
    assert info["active"] is True
    assert info["client_id"] == info["sub"] == info["aud"] == lender.client_id
    assert info["iss"] == settings.issuer
    assert info["token_type"] == "Bearer"
    assert info["scope"] == "exchange user:read user:write"
    assert info["exp"] - info["iat"] == 900
    assert "user_id" not in info
    refresh = await introspect(client, lender, pair["refresh_token"])
    assert refresh["token_type"] == "refresh_token"
    assert refresh["exp"] - refresh["iat"] == settings.refresh_token_ttl


async def test_only_parties_see_a_multi_party_token(client, world):
    shared = await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=world.user["user_id"],
        subject_token_type=MULTI,
        audience=world.urn_a,
    )
    assert (await introspect(client, world.lender, shared["access_token"]))["active"] is True
    assert (await introspect(client, world.partner_a, shared["access_token"]))["active"] is True
    for stranger in (world.partner_b, world.other, world.outsider):
        hidden = await introspect(client, stranger, shared["access_token"])
        assert hidden == {"active": False, "request_id": hidden["request_id"]}


async def test_unknown_expired_and_malformed_tokens_are_inactive(client, world, sessions, runtime):
    pair = await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=world.user["user_id"],
        subject_token_type=USER,
        audience=world.lender.client_id,
    )
    digest = tokens.digest(runtime.ring.hash_key, pair["access_token"])
    async with sessions() as session, session.begin():
        await session.execute(
            update(AccessToken).where(AccessToken.digest == digest).values(expires_at=text("now() - interval '1 s'"))
        )
    for token in (pair["access_token"], "pda-AAAAAAAAAAAAAAAAAAAAAA==", "user-sandbox-x", "\u00e9\u00e9"):
        assert (await introspect(client, world.lender, token))["active"] is False


async def test_introspection_by_a_partner_is_audited(client, world, sessions):
    shared = await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=world.user["user_id"],
        subject_token_type=MULTI,
        audience=world.urn_a,
    )
    await introspect(client, world.partner_a, shared["access_token"])
    await introspect(client, world.outsider, shared["access_token"])
    async with sessions() as session:
        rows = (
            await session.execute(
                select(AuditEvent.actor, AuditEvent.outcome, AuditEvent.user_id).where(
                    AuditEvent.tenant_id == world.lender.tenant_id, AuditEvent.action == "token.introspected"
                )
            )
        ).all()
    assert sorted(rows) == sorted(
        [
            (world.partner_a.client_id, "success", world.user["user_id"]),
            (world.outsider.client_id, "denied", world.user["user_id"]),
        ]
    )


async def test_introspection_requires_authentication_and_a_token(client, world):
    anonymous = await client.post("/oauth/introspect", json={"token": "pda-x"})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_client"
    missing = await client.post("/oauth/introspect", json={}, headers=world.lender.headers)
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"
    form = await client.post(
        "/oauth/introspect",
        content=f"token=pda-x&client_id={world.lender.client_id}&secret={world.lender.secret}",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 200
    assert form.json()["active"] is False
