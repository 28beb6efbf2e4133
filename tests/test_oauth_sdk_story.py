"""The lender -> partner story through the official plaid-python SDK against a live broker."""

from __future__ import annotations

import json
import secrets

import plaid
import pytest
from plaid.api import plaid_api
from plaid.model.o_auth_grant_type import OAuthGrantType
from plaid.model.o_auth_introspect_request import OAuthIntrospectRequest
from plaid.model.o_auth_revoke_request import OAuthRevokeRequest
from plaid.model.o_auth_subject_token_type import OAuthSubjectTokenType
from plaid.model.o_auth_token_request import OAuthTokenRequest
from plaid.model.user_create_request import UserCreateRequest

from tests.oauth_helpers import add_member, allow, new_audience

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


def _api(url: str, creds) -> plaid_api.PlaidApi:
    configuration = plaid.Configuration(host=url, api_key={"clientId": creds.client_id, "secret": creds.secret})
    configuration.retries = 0
    return plaid_api.PlaidApi(plaid.ApiClient(configuration))


@pytest.fixture
async def parties(sessions, make_tenant):
    lender = await make_tenant("lender")
    experian_like = await make_tenant("partner one", kind="partner")
    fannie_like = await make_tenant("partner two", kind="partner")
    urn_one, urn_two = await new_audience(sessions), await new_audience(sessions)
    await add_member(sessions, urn_one, experian_like.tenant_id)
    await add_member(sessions, urn_two, fannie_like.tenant_id)
    await allow(sessions, lender.tenant_id, urn=urn_one)
    await allow(sessions, lender.tenant_id, urn=urn_two)
    return lender, experian_like, fannie_like, urn_one, urn_two


def test_lender_to_partner_story_through_plaid_python(live_server, parties):
    lender, partner_one, partner_two, urn_one, urn_two = parties
    lender_api = _api(live_server.url, lender)
    one_api, two_api = _api(live_server.url, partner_one), _api(live_server.url, partner_two)

    user = lender_api.user_create(UserCreateRequest(client_user_id=f"story-{secrets.token_hex(4)}"))
    assert user.user_id.startswith("usr_")

    shared = lender_api.oauth_token(
        OAuthTokenRequest(
            grant_type=OAuthGrantType(EXCHANGE),
            subject_token=user.user_id,
            subject_token_type=OAuthSubjectTokenType("urn:plaid:params:credit:multi-user"),
            audience=f"{urn_one},{urn_two}",
        )
    )
    assert shared.token_type == "Bearer"
    assert isinstance(shared.expires_in, int)
    assert shared.to_dict()["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"

    # an unrelated grant of the same user, which must survive the revocation below
    unrelated = lender_api.oauth_token(
        OAuthTokenRequest(
            grant_type=OAuthGrantType(EXCHANGE),
            subject_token=user.user_id,
            subject_token_type=OAuthSubjectTokenType("urn:plaid:params:tokens:user"),
            audience=lender.client_id,
        )
    )

    # each partner refreshes the shared token with its own credentials, then rotates its own lineage
    lineages = {}
    for name, api in (("one", one_api), ("two", two_api)):
        forked = api.oauth_token(
            OAuthTokenRequest(grant_type=OAuthGrantType("refresh_token"), refresh_token=shared.refresh_token)
        )
        rotated = api.oauth_token(
            OAuthTokenRequest(grant_type=OAuthGrantType("refresh_token"), refresh_token=forked.refresh_token)
        )
        info = api.oauth_introspect(OAuthIntrospectRequest(token=rotated.access_token))
        assert info.active is True
        assert info.user_id == user.user_id
        assert info.aud == f"{urn_one},{urn_two}"
        assert info.exp > info.iat
        lineages[name] = (api, rotated)

    # the lender revokes the shared token: every partner lineage is dead
    lender_api.oauth_revoke(OAuthRevokeRequest(token=shared.refresh_token))
    for api, rotated in lineages.values():
        assert api.oauth_introspect(OAuthIntrospectRequest(token=rotated.access_token)).active is False
        with pytest.raises(plaid.ApiException) as failure:
            api.oauth_token(
                OAuthTokenRequest(grant_type=OAuthGrantType("refresh_token"), refresh_token=rotated.refresh_token)
            )
        assert failure.value.status == 400
        body = json.loads(failure.value.body)
        assert body["error"] == "invalid_grant"
        assert body["request_id"]

    # the unrelated grant of the same user lives on
    assert lender_api.oauth_introspect(OAuthIntrospectRequest(token=unrelated.access_token)).active is True


def test_sdk_sees_invalid_client_as_401(live_server, parties):
    lender = parties[0]
    api = _api(live_server.url, type(lender)(lender.client_id, "0" * 32, lender.tenant_id))
    with pytest.raises(plaid.ApiException) as failure:
        api.oauth_token(OAuthTokenRequest(grant_type=OAuthGrantType("client_credentials")))
    assert failure.value.status == 401
    assert json.loads(failure.value.body)["error"] == "invalid_client"
