from __future__ import annotations

import pytest
from sqlalchemy import select

from broker.db.models import Grant, GrantParty
from tests.oauth_helpers import (
    EXCHANGE,
    MULTI,
    OAUTH_USER,
    USER,
    allow,
    build_world,
    create_user,
    introspect,
    post_token,
    token_ok,
)


@pytest.fixture
async def world(client, sessions, make_tenant):
    return await build_world(client, sessions, make_tenant)


async def _exchange(client, creds, subject, subject_type, audience=None, **extra):
    params = {"grant_type": EXCHANGE, "subject_token": subject, "subject_token_type": subject_type, **extra}
    if audience is not None:
        params["audience"] = audience
    return await post_token(client, creds, **params)


# --- urn:plaid:params:tokens:user -----------------------------------------------------------------


@pytest.mark.parametrize("field", ["user_id", "user_token"])
async def test_user_token_exchange_accepts_user_id_or_user_token(client, world, field):
    response = await _exchange(client, world.lender, world.user[field], USER, world.lender.client_id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    info = await introspect(client, world.lender, body["access_token"])
    assert info["active"] is True
    assert info["user_id"] == world.user["user_id"]
    assert info["sub"] == world.user["user_id"]
    assert info["client_id"] == world.lender.client_id
    assert info["aud"] == world.lender.client_id


@pytest.mark.parametrize("legacy", ["urn:plaid:params:tokensdb::user-token", "urn:plaid:params:tokensdb:user-token"])
async def test_legacy_user_token_urns_are_aliases(client, world, legacy):
    response = await _exchange(client, world.lender, world.user["user_token"], legacy, world.lender.client_id)
    assert response.status_code == 200, response.text


async def test_user_token_exchange_audience_must_be_the_caller(client, world):
    response = await _exchange(client, world.lender, world.user["user_id"], USER, world.other.client_id)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"


async def test_another_tenants_user_is_an_invalid_subject(client, world):
    response = await _exchange(client, world.other, world.user["user_id"], USER, world.other.client_id)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"subject_token_type": USER}, "invalid_request"),
        ({"subject_token": "usr_x"}, "invalid_request"),
        ({"subject_token": "usr_x", "subject_token_type": "urn:nope"}, "invalid_request"),
        ({"subject_token": "usr_doesnotexist", "subject_token_type": USER}, "invalid_request"),
        ({"subject_token": "usr_x", "subject_token_type": USER, "actor_token": "a"}, "invalid_request"),
        ({"subject_token": "usr_x", "subject_token_type": USER, "requested_token_type": "urn:x"}, "invalid_request"),
    ],
)
async def test_exchange_parameter_errors(client, world, params, error):
    response = await post_token(client, world.lender, grant_type=EXCHANGE, **params)
    assert response.status_code == 400
    assert response.json()["error"] == error


# --- urn:plaid:params:oauth:user-token ------------------------------------------------------------


async def _user_refresh_token(client, world, scope=None):
    extra = {"scope": scope} if scope else {}
    response = await _exchange(client, world.lender, world.user["user_id"], USER, world.lender.client_id, **extra)
    return response.json()


async def test_oauth_user_token_exchange_toward_another_client(client, world):
    subject = await _user_refresh_token(client, world)
    response = await _exchange(client, world.lender, subject["refresh_token"], OAUTH_USER, world.other.client_id)
    assert response.status_code == 200, response.text
    exchanged = response.json()
    # the other client holds it: it introspects it, refreshes it with its own credentials
    info = await introspect(client, world.other, exchanged["access_token"])
    assert info["active"] is True
    assert info["client_id"] == world.other.client_id
    assert info["aud"] == world.other.client_id
    assert info["user_id"] == world.user["user_id"]
    refreshed = await post_token(
        client, world.other, grant_type="refresh_token", refresh_token=exchanged["refresh_token"]
    )
    assert refreshed.status_code == 200, refreshed.text
    # the lender (requester) sees it too; an outsider does not
    assert (await introspect(client, world.lender, exchanged["access_token"]))["active"] is True
    hidden = await introspect(client, world.outsider, exchanged["access_token"])
    assert hidden["active"] is False
    assert set(hidden) == {"active", "request_id"}


async def test_oauth_user_token_requires_the_exchange_scope(client, world):
    subject = await _user_refresh_token(client, world, scope="user:read")
    response = await _exchange(client, world.lender, subject["refresh_token"], OAUTH_USER, world.other.client_id)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


async def test_oauth_user_token_needs_a_policy_for_the_audience(client, world):
    subject = await _user_refresh_token(client, world)
    response = await _exchange(client, world.lender, subject["refresh_token"], OAUTH_USER, world.outsider.client_id)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"


async def test_oauth_user_token_subject_must_be_held_by_the_caller(client, world, sessions):
    subject = await _user_refresh_token(client, world)
    await allow(sessions, world.other.tenant_id, target_tenant_id=world.outsider.tenant_id)
    response = await _exchange(client, world.other, subject["refresh_token"], OAUTH_USER, world.outsider.client_id)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_oauth_user_token_rejects_access_tokens_and_rotated_tokens(client, world):
    subject = await _user_refresh_token(client, world)
    as_access = await _exchange(client, world.lender, subject["access_token"], OAUTH_USER, world.other.client_id)
    assert as_access.json()["error"] == "invalid_request"
    await post_token(client, world.lender, grant_type="refresh_token", refresh_token=subject["refresh_token"])
    rotated = await _exchange(client, world.lender, subject["refresh_token"], OAUTH_USER, world.other.client_id)
    assert rotated.json()["error"] == "invalid_request"


async def test_legacy_oauth_user_token_urn(client, world):
    subject = await _user_refresh_token(client, world)
    response = await _exchange(
        client, world.lender, subject["refresh_token"], "urn:plaid:params:oauth::user-token", world.other.client_id
    )
    assert response.status_code == 200, response.text


async def test_policy_scopes_and_lifetimes_apply(client, sessions, make_tenant):
    lender, partner = await make_tenant(), await make_tenant(kind="partner")
    await allow(
        sessions,
        lender.tenant_id,
        target_tenant_id=partner.tenant_id,
        allowed_scopes=["user:read"],
        access_token_ttl=120,
        refresh_token_ttl=3600,
    )
    user = await create_user(client, lender)
    subject = (await _exchange(client, lender, user["user_id"], USER, lender.client_id)).json()
    response = await _exchange(client, lender, subject["refresh_token"], OAUTH_USER, partner.client_id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "user:read"
    assert body["expires_in"] == 120
    info = await introspect(client, partner, body["refresh_token"])
    assert info["exp"] - info["iat"] == 3600
    too_wide = await _exchange(
        client, lender, subject["refresh_token"], OAUTH_USER, partner.client_id, scope="user:write"
    )
    assert too_wide.json()["error"] == "invalid_scope"


# --- urn:plaid:params:credit:multi-user -------------------------------------------------------------


async def test_multi_party_exchange_with_urns_and_client_ids(client, world, sessions):
    audience = f"{world.urn_a}, {world.urn_b},{world.other.client_id}"
    response = await _exchange(client, world.lender, world.user["user_id"], MULTI, audience)
    assert response.status_code == 200, response.text
    shared = response.json()
    info = await introspect(client, world.partner_a, shared["access_token"])
    assert info["active"] is True
    assert info["aud"] == f"{world.urn_a},{world.urn_b},{world.other.client_id}"
    assert isinstance(info["aud"], str)
    assert info["user_id"] == world.user["user_id"]
    async with sessions() as session:
        grant = await session.scalar(
            select(Grant).where(Grant.tenant_id == world.lender.tenant_id, Grant.kind == "multi_party")
        )
        parties = set(
            (await session.execute(select(GrantParty.tenant_id).where(GrantParty.grant_id == grant.id))).scalars()
        )
    assert parties == {world.partner_a.tenant_id, world.partner_b.tenant_id, world.other.tenant_id}
    # the requester is not a party unless listed
    assert world.lender.tenant_id not in parties


async def test_repeated_audience_parameters_and_duplicates(client, world):
    form = (
        f"grant_type={EXCHANGE}&subject_token={world.user['user_id']}&subject_token_type={MULTI}"
        f"&audience={world.urn_a}&audience={world.urn_b}&audience={world.urn_a}"
    )
    response = await client.post(
        "/oauth/token",
        content=form,
        headers={"content-type": "application/x-www-form-urlencoded", **world.lender.headers},
    )
    assert response.status_code == 200, response.text
    info = await introspect(client, world.partner_b, response.json()["access_token"])
    assert info["aud"] == f"{world.urn_a},{world.urn_b}"


async def test_multi_party_audience_is_all_or_nothing(client, world, sessions):
    async with sessions() as session:
        before = await session.scalar(select(Grant.id).where(Grant.tenant_id == world.lender.tenant_id).limit(1))
    for audience in (
        f"{world.urn_a},urn:plaid:params:cra-partner:unknown",
        f"{world.urn_a},{world.outsider.client_id}",
        f"{world.urn_a},000000000000000000000000",
    ):
        response = await _exchange(client, world.lender, world.user["user_id"], MULTI, audience)
        assert response.status_code == 400, audience
        assert response.json()["error"] == "invalid_target"
    async with sessions() as session:
        after = await session.scalar(select(Grant.id).where(Grant.tenant_id == world.lender.tenant_id).limit(1))
    assert before == after is None


async def test_too_many_audiences(client, world):
    audience = ",".join(str(i) for i in range(10_000))
    response = await _exchange(client, world.lender, world.user["user_id"], MULTI, audience)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    eleven = ",".join([world.urn_a] * 5 + [f"c{i}" for i in range(10)])
    response = await _exchange(client, world.lender, world.user["user_id"], MULTI, eleven)
    assert response.json()["error"] == "invalid_request"


async def test_oversized_body_is_a_413_oauth_error(client, world):
    audience = ",".join(f"urn:test:{i}" for i in range(10_000))
    response = await _exchange(client, world.lender, world.user["user_id"], MULTI, audience)
    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["request_id"] == response.headers["x-request-id"]


async def test_multi_party_requires_an_audience(client, world):
    response = await _exchange(client, world.lender, world.user["user_id"], MULTI)
    assert response.json()["error"] == "invalid_request"
    blank = await _exchange(client, world.lender, world.user["user_id"], MULTI, " , ,")
    assert blank.json()["error"] == "invalid_request"


async def test_each_party_forks_its_own_rotating_lineage(client, world):
    shared = (
        await _exchange(client, world.lender, world.user["user_id"], MULTI, f"{world.urn_a},{world.urn_b}")
    ).json()
    a1 = await token_ok(client, world.partner_a, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    b1 = await token_ok(client, world.partner_b, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    assert a1["refresh_token"] != b1["refresh_token"]
    # the shared token is not consumed: a party may present it again
    again = await post_token(client, world.partner_a, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    assert again.status_code == 200
    # each lineage rotates on its own, and belongs to its party only
    a2 = await token_ok(client, world.partner_a, grant_type="refresh_token", refresh_token=a1["refresh_token"])
    cross = await post_token(client, world.partner_b, grant_type="refresh_token", refresh_token=a2["refresh_token"])
    assert cross.json()["error"] == "invalid_grant"
    info = await introspect(client, world.partner_a, a2["access_token"])
    assert info["client_id"] == world.partner_a.client_id
    assert info["user_id"] == world.user["user_id"]
    assert (await introspect(client, world.partner_b, a2["access_token"]))["active"] is False


async def test_non_party_cannot_use_the_shared_token(client, world):
    shared = (await _exchange(client, world.lender, world.user["user_id"], MULTI, world.urn_a)).json()
    for creds in (world.outsider, world.partner_b, world.lender):
        response = await post_token(client, creds, grant_type="refresh_token", refresh_token=shared["refresh_token"])
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_grant"


async def test_removed_user_cannot_be_exchanged(client, world):
    response = await client.post("/user/remove", json={"user_id": world.user["user_id"]}, headers=world.lender.headers)
    assert response.status_code == 200, response.text
    exchange = await _exchange(client, world.lender, world.user["user_id"], MULTI, world.urn_a)
    assert exchange.json()["error"] == "invalid_request"


async def test_tokens_for_other_parties_carry_exchange_only_when_asked(client, world):
    default = await _exchange(client, world.lender, world.user["user_id"], MULTI, world.urn_a)
    assert default.json()["scope"] == "user:read user:write"
    asked = await _exchange(client, world.lender, world.user["user_id"], MULTI, world.urn_a, scope="exchange user:read")
    assert asked.json()["scope"] == "exchange user:read"
    subject = await _user_refresh_token(client, world)
    assert "exchange" in subject["scope"]
    onward = await _exchange(client, world.lender, subject["refresh_token"], OAUTH_USER, world.other.client_id)
    assert onward.json()["scope"] == "user:read user:write"
