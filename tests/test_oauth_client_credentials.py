from __future__ import annotations

import base64

import pytest
from sqlalchemy import select

from broker.db.models import AccessToken, RefreshToken
from tests.oauth_helpers import introspect, post_token, token_ok


async def test_client_credentials_issues_a_plaid_shaped_pair(client, make_tenant):
    lender = await make_tenant()
    response = await post_token(client, lender, grant_type="client_credentials")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in", "scope", "request_id"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert isinstance(body["expires_in"], int)
    assert body["access_token"].startswith("pda-")
    assert len(body["access_token"]) == 28
    assert body["refresh_token"].startswith("pdr-")
    assert body["scope"] == "exchange user:read user:write"
    assert body["request_id"] == response.headers["x-request-id"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


async def test_tokens_are_stored_only_as_digests_and_ciphertext(client, make_tenant, sessions):
    lender = await make_tenant()
    body = await token_ok(client, lender, grant_type="client_credentials")
    async with sessions() as session:
        refresh_rows = (await session.execute(select(RefreshToken))).scalars().all()
        access_rows = (await session.execute(select(AccessToken))).scalars().all()
    for row in refresh_rows:
        assert body["refresh_token"] not in row.token_enc
        assert row.token_enc.startswith("v2.")  # under the tenant's data key (broker.keys.sealing)
        assert body["refresh_token"].encode() != row.digest
    assert all(len(row.digest) == 32 for row in access_rows)


async def test_scope_may_only_narrow(client, make_tenant):
    lender = await make_tenant(allowed_scopes=("user:read", "exchange"), default_scopes=("user:read",))
    assert (await token_ok(client, lender, grant_type="client_credentials"))["scope"] == "user:read"
    narrowed = await token_ok(client, lender, grant_type="client_credentials", scope="exchange")
    assert narrowed["scope"] == "exchange"
    wider = await post_token(client, lender, grant_type="client_credentials", scope="user:read user:write")
    assert wider.status_code == 400
    assert wider.json()["error"] == "invalid_scope"


@pytest.mark.parametrize("scope", ["bad\x7fscope", 'quote"scope', "a\\b"])
async def test_malformed_scope_is_invalid_scope(client, make_tenant, scope):
    lender = await make_tenant()
    response = await post_token(client, lender, grant_type="client_credentials", scope=scope)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


async def test_resource_must_be_known(client, make_tenant, settings):
    lender = await make_tenant()
    unknown = await post_token(client, lender, grant_type="client_credentials", resource="https://evil.example")
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "invalid_target"
    ok = await token_ok(client, lender, grant_type="client_credentials", resource=settings.issuer)
    assert (await introspect(client, lender, ok["access_token"]))["aud"] == settings.issuer


async def test_form_encoded_request_with_body_credentials(client, make_tenant):
    lender = await make_tenant()
    response = await client.post(
        "/oauth/token",
        content=f"grant_type=client_credentials&client_id={lender.client_id}&client_secret={lender.secret}",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


async def test_http_basic_authentication(client, make_tenant):
    lender = await make_tenant()
    basic = base64.b64encode(f"{lender.client_id}:{lender.secret}".encode()).decode()
    response = await client.post(
        "/oauth/token",
        content="grant_type=client_credentials",
        headers={"content-type": "application/x-www-form-urlencoded", "authorization": f"Basic {basic}"},
    )
    assert response.status_code == 200, response.text


async def test_basic_with_another_source_is_refused(client, make_tenant):
    lender = await make_tenant()
    basic = base64.b64encode(f"{lender.client_id}:{lender.secret}".encode()).decode()
    response = await client.post(
        "/oauth/token",
        json={"grant_type": "client_credentials", "client_id": lender.client_id, "secret": lender.secret},
        headers={"authorization": f"Basic {basic}"},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_headers_and_body_that_disagree_are_refused(client, make_tenant):
    lender, other = await make_tenant(), await make_tenant()
    response = await client.post(
        "/oauth/token",
        json={"grant_type": "client_credentials", "client_id": other.client_id, "secret": other.secret},
        headers=lender.headers,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_identical_headers_and_body_are_accepted(client, make_tenant):
    lender = await make_tenant()
    response = await client.post(
        "/oauth/token", json={"grant_type": "client_credentials", **lender.body}, headers=lender.headers
    )
    assert response.status_code == 200, response.text


async def test_secret_and_client_secret_fields_both_work(client, make_tenant):
    lender = await make_tenant()
    for field in ("secret", "client_secret"):
        body = {"grant_type": "client_credentials", "client_id": lender.client_id, field: lender.secret}
        assert (await client.post("/oauth/token", json=body)).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"PLAID-CLIENT-ID": "nope"},
        {"PLAID-CLIENT-ID": "000000000000000000000000", "PLAID-SECRET": "0" * 32},
    ],
)
async def test_missing_or_unknown_credentials_are_invalid_client(client, headers):
    response = await client.post("/oauth/token", json={"grant_type": "client_credentials"}, headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "invalid_client"
    assert body["request_id"]


async def test_wrong_secret_is_invalid_client_and_never_echoed(client, make_tenant):
    lender = await make_tenant()
    wrong = "f" * 32
    response = await client.post(
        "/oauth/token",
        json={"grant_type": "client_credentials"},
        headers={"PLAID-CLIENT-ID": lender.client_id, "PLAID-SECRET": wrong},
    )
    assert response.status_code == 401
    assert wrong not in response.text
    assert lender.secret not in response.text


async def test_disabled_tenant_cannot_authenticate(client, make_tenant):
    disabled = await make_tenant(status="disabled")
    response = await post_token(client, disabled, grant_type="client_credentials")
    assert response.status_code == 401


async def test_grant_type_errors(client, make_tenant):
    lender = await make_tenant()
    missing = await post_token(client, lender)
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"
    unknown = await post_token(client, lender, grant_type="password")
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "unsupported_grant_type"


async def test_metadata_describes_the_server(client, settings):
    response = await client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    body = response.json()
    assert body["issuer"] == settings.issuer
    assert body["token_endpoint"].endswith("/oauth/token")
    assert "urn:ietf:params:oauth:grant-type:token-exchange" in body["grant_types_supported"]
    assert "urn:plaid:params:credit:multi-user" in body["subject_token_types_supported"]


async def test_basic_auth_failure_carries_www_authenticate(client, make_tenant):
    lender = await make_tenant()
    basic = base64.b64encode(f"{lender.client_id}:wrong".encode()).decode()
    response = await client.post(
        "/oauth/token",
        content="grant_type=client_credentials",
        headers={"content-type": "application/x-www-form-urlencoded", "authorization": f"Basic {basic}"},
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
    assert response.json()["error"] == "invalid_client"
