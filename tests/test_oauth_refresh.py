from __future__ import annotations

from sqlalchemy import select, text, update

from broker.crypto import tokens
from broker.db.models import AuditEvent, RefreshToken
from tests.oauth_helpers import introspect, post_token, token_ok


async def _pair(client, tenant, **params):
    return await token_ok(client, tenant, grant_type="client_credentials", **params)


async def _refresh(client, tenant, refresh_token, **params):
    return await post_token(client, tenant, grant_type="refresh_token", refresh_token=refresh_token, **params)


async def test_refresh_rotates_and_the_new_pair_works(client, make_tenant):
    lender = await make_tenant()
    first = await _pair(client, lender)
    response = await _refresh(client, lender, first["refresh_token"])
    assert response.status_code == 200, response.text
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (await introspect(client, lender, second["access_token"]))["active"] is True
    assert (await introspect(client, lender, second["refresh_token"]))["active"] is True
    # the rotated token no longer introspects as active
    assert (await introspect(client, lender, first["refresh_token"]))["active"] is False


async def test_retry_within_grace_returns_the_same_pair(client, make_tenant):
    lender = await make_tenant()
    first = await _pair(client, lender)
    second = (await _refresh(client, lender, first["refresh_token"])).json()
    retry = await _refresh(client, lender, first["refresh_token"])
    assert retry.status_code == 200, retry.text
    body = retry.json()
    assert body["access_token"] == second["access_token"]
    assert body["refresh_token"] == second["refresh_token"]
    assert 0 < body["expires_in"] <= second["expires_in"]


async def test_replay_after_successor_was_used_revokes_the_family(client, make_tenant, sessions):
    lender = await make_tenant()
    first = await _pair(client, lender)
    second = (await _refresh(client, lender, first["refresh_token"])).json()
    third = (await _refresh(client, lender, second["refresh_token"])).json()
    replay = await _refresh(client, lender, first["refresh_token"])
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    # the whole family is dead, including the newest pair
    assert (await introspect(client, lender, third["access_token"]))["active"] is False
    assert (await _refresh(client, lender, third["refresh_token"])).json()["error"] == "invalid_grant"
    async with sessions() as session:
        actions = (
            await session.execute(
                select(AuditEvent.action).where(
                    AuditEvent.tenant_id == lender.tenant_id, AuditEvent.outcome == "denied"
                )
            )
        ).scalars()
        assert "token.replay_detected" in set(actions)


async def test_replay_after_the_grace_window_revokes_the_family(client, make_tenant, sessions, runtime):
    lender = await make_tenant()
    first = await _pair(client, lender)
    second = (await _refresh(client, lender, first["refresh_token"])).json()
    digest = tokens.digest(runtime.ring.hash_key, first["refresh_token"])
    async with sessions() as session, session.begin():
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.digest == digest)
            .values(rotated_at=RefreshToken.rotated_at - text("interval '1 hour'"))
        )
    replay = await _refresh(client, lender, first["refresh_token"])
    assert replay.json()["error"] == "invalid_grant"
    assert (await introspect(client, lender, second["refresh_token"]))["active"] is False


async def test_refresh_scope_may_only_narrow(client, make_tenant):
    lender = await make_tenant()
    first = await _pair(client, lender, scope="user:read exchange")
    narrowed = await _refresh(client, lender, first["refresh_token"], scope="user:read")
    assert narrowed.status_code == 200
    assert narrowed.json()["scope"] == "user:read"
    # the lineage keeps the grant's scope: the next refresh may ask for exchange again
    again = await _refresh(client, lender, narrowed.json()["refresh_token"], scope="exchange")
    assert again.json()["scope"] == "exchange"
    wider = await _refresh(client, lender, again.json()["refresh_token"], scope="user:write")
    assert wider.status_code == 400
    assert wider.json()["error"] == "invalid_scope"


async def test_another_client_cannot_use_a_refresh_token(client, make_tenant):
    lender, thief = await make_tenant(), await make_tenant()
    first = await _pair(client, lender)
    stolen = await _refresh(client, thief, first["refresh_token"])
    assert stolen.status_code == 400
    assert stolen.json()["error"] == "invalid_grant"
    # and the rightful holder is unaffected
    assert (await _refresh(client, lender, first["refresh_token"])).status_code == 200


async def test_unknown_and_malformed_refresh_tokens(client, make_tenant):
    lender = await make_tenant()
    for value in ("pdr-AAAAAAAAAAAAAAAAAAAAAA==", "not-a-token", "x" * 4000):
        response = await _refresh(client, lender, value)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_grant"
    missing = await post_token(client, lender, grant_type="refresh_token")
    assert missing.json()["error"] == "invalid_request"


async def test_expired_refresh_token_is_invalid_grant(client, make_tenant, sessions, runtime):
    lender = await make_tenant()
    first = await _pair(client, lender)
    digest = tokens.digest(runtime.ring.hash_key, first["refresh_token"])
    async with sessions() as session, session.begin():
        await session.execute(
            update(RefreshToken).where(RefreshToken.digest == digest).values(expires_at=text("now() - interval '1 s'"))
        )
    response = await _refresh(client, lender, first["refresh_token"])
    assert response.json()["error"] == "invalid_grant"
    assert (await introspect(client, lender, first["refresh_token"]))["active"] is False


async def test_revoked_family_cannot_refresh(client, make_tenant):
    lender = await make_tenant()
    first = await _pair(client, lender)
    await client.post("/oauth/revoke", json={"token": first["refresh_token"]}, headers=lender.headers)
    response = await _refresh(client, lender, first["refresh_token"])
    assert response.json()["error"] == "invalid_grant"
