from __future__ import annotations

import pytest
from sqlalchemy import select

from broker.db.models import AuditEvent, Grant
from tests.oauth_helpers import EXCHANGE, MULTI, OAUTH_USER, USER, build_world, introspect, revoke, token_ok


@pytest.fixture
async def world(client, sessions, make_tenant):
    return await build_world(client, sessions, make_tenant)


async def _user_pair(client, world):
    return await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=world.user["user_id"],
        subject_token_type=USER,
        audience=world.lender.client_id,
    )


async def _multi(client, world, audience):
    return await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=world.user["user_id"],
        subject_token_type=MULTI,
        audience=audience,
    )


async def test_revoking_a_refresh_token_cascades_through_rotations_and_exchanges(client, world):
    root = await _user_pair(client, world)
    rotated = await token_ok(client, world.lender, grant_type="refresh_token", refresh_token=root["refresh_token"])
    child = await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=rotated["refresh_token"],
        subject_token_type=OAUTH_USER,
        audience=world.other.client_id,
    )
    grandchild = await token_ok(client, world.other, grant_type="refresh_token", refresh_token=child["refresh_token"])
    unrelated = await _user_pair(client, world)

    # revoke through the ORIGINAL, already rotated, refresh token
    await revoke(client, world.lender, root["refresh_token"])

    for token in (rotated["access_token"], rotated["refresh_token"], child["access_token"], grandchild["access_token"]):
        assert (await introspect(client, world.lender, token))["active"] is False
    assert (await introspect(client, world.other, grandchild["refresh_token"]))["active"] is False
    refused = await client.post(
        "/oauth/token",
        json={"grant_type": "refresh_token", "refresh_token": grandchild["refresh_token"]},
        headers=world.other.headers,
    )
    assert refused.json()["error"] == "invalid_grant"
    # an unrelated grant of the same user lives
    assert (await introspect(client, world.lender, unrelated["access_token"]))["active"] is True


async def test_revoking_an_access_token_revokes_only_it(client, world):
    pair = await _user_pair(client, world)
    await revoke(client, world.lender, pair["access_token"])
    assert (await introspect(client, world.lender, pair["access_token"]))["active"] is False
    assert (await introspect(client, world.lender, pair["refresh_token"]))["active"] is True
    refreshed = await token_ok(client, world.lender, grant_type="refresh_token", refresh_token=pair["refresh_token"])
    assert (await introspect(client, world.lender, refreshed["access_token"]))["active"] is True


async def test_unknown_tokens_get_200(client, world):
    for token in ("pda-AAAAAAAAAAAAAAAAAAAAAA==", "pdr-AAAAAAAAAAAAAAAAAAAAAA==", "garbage"):
        response = await client.post("/oauth/revoke", json={"token": token}, headers=world.lender.headers)
        assert response.status_code == 200
        assert set(response.json()) == {"request_id"}


async def test_revoke_requires_a_token_and_authentication(client, world):
    missing = await client.post("/oauth/revoke", json={}, headers=world.lender.headers)
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"
    anonymous = await client.post("/oauth/revoke", json={"token": "pda-x"})
    assert anonymous.status_code == 401


async def test_non_party_revocation_changes_nothing_and_is_audited(client, world, sessions):
    pair = await _user_pair(client, world)
    await revoke(client, world.outsider, pair["refresh_token"])
    await revoke(client, world.outsider, pair["access_token"])
    assert (await introspect(client, world.lender, pair["access_token"]))["active"] is True
    assert (await introspect(client, world.lender, pair["refresh_token"]))["active"] is True
    async with sessions() as session:
        refused = (
            (
                await session.execute(
                    select(AuditEvent).where(
                        AuditEvent.actor == world.outsider.client_id, AuditEvent.action == "token.revoke_refused"
                    )
                )
            )
            .scalars()
            .all()
        )
    assert len(refused) == 2
    assert all(event.outcome == "denied" for event in refused)


async def test_lender_revoking_the_shared_token_kills_every_party_lineage(client, world):
    shared = await _multi(client, world, f"{world.urn_a},{world.urn_b}")
    a = await token_ok(client, world.partner_a, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    b = await token_ok(client, world.partner_b, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    b2 = await token_ok(client, world.partner_b, grant_type="refresh_token", refresh_token=b["refresh_token"])
    unrelated = await _user_pair(client, world)
    await revoke(client, world.lender, shared["refresh_token"])
    for creds, token in (
        (world.partner_a, a["access_token"]),
        (world.partner_b, b2["access_token"]),
        (world.partner_a, shared["access_token"]),
    ):
        assert (await introspect(client, creds, token))["active"] is False
    assert (await introspect(client, world.lender, unrelated["refresh_token"]))["active"] is True


async def test_a_party_revoking_the_shared_token_withdraws_only_its_share(client, world):
    shared = await _multi(client, world, f"{world.urn_a},{world.urn_b}")
    a = await token_ok(client, world.partner_a, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    b = await token_ok(client, world.partner_b, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    await revoke(client, world.partner_a, shared["refresh_token"])
    assert (await introspect(client, world.partner_a, a["access_token"]))["active"] is False
    assert (await introspect(client, world.partner_b, b["access_token"]))["active"] is True
    assert (await introspect(client, world.partner_b, shared["access_token"]))["active"] is True
    # partner a can no longer fork; partner b still can
    again = await client.post(
        "/oauth/token",
        json={"grant_type": "refresh_token", "refresh_token": shared["refresh_token"]},
        headers=world.partner_a.headers,
    )
    assert again.json()["error"] == "invalid_grant"
    await token_ok(client, world.partner_b, grant_type="refresh_token", refresh_token=shared["refresh_token"])


async def test_user_remove_revokes_every_grant_of_the_user(client, world, sessions):
    shared = await _multi(client, world, world.urn_a)
    a = await token_ok(client, world.partner_a, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    pair = await _user_pair(client, world)
    response = await client.post("/user/remove", json={"user_id": world.user["user_id"]}, headers=world.lender.headers)
    assert response.status_code == 200, response.text
    for creds, token in ((world.partner_a, a["access_token"]), (world.lender, pair["refresh_token"])):
        assert (await introspect(client, creds, token))["active"] is False
    async with sessions() as session:
        live = await session.scalar(
            select(Grant.id).where(Grant.tenant_id == world.lender.tenant_id, Grant.revoked_at.is_(None))
        )
    assert live is None
