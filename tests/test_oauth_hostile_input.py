"""Malformed, duplicated and hostile input on the OAuth endpoints: clean 4xx with a request id."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from broker.db.models import Grant

PATHS = ["/oauth/token", "/oauth/introspect", "/oauth/revoke"]
JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


def _assert_oauth_error(response, status: int, error: str = "invalid_request") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert body["error_description"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b"{not json", JSON),
        (b'{"grant_type": "client_credentials"', JSON),
        (b"[1, 2, 3]", JSON),
        (b'"a string"', JSON),
        (b'{"grant_type": 5}', JSON),
        (b'{"grant_type": {"nested": true}}', JSON),
        (b'{"grant_type": "a", "grant_type": "b"}', JSON),
        (b'{"token": "a\\u0000b", "grant_type": "x"}', JSON),
        (b"\xff\xfe\x00garbage", JSON),
        (b"[" * 5000 + b"]" * 5000, JSON),
        (b"grant_type=a&grant_type=b&token=a&token=b", FORM),
        (b"grant_type=%FF%FE&token=%FF", FORM),
        (b"token=%00&grant_type=%00", FORM),
        (b"\xff\xfe", FORM),
    ],
)
async def test_malformed_bodies_are_invalid_request(client, make_tenant, path, content, headers):
    tenant = await make_tenant()
    response = await client.post(path, content=content, headers={**headers, **tenant.headers})
    _assert_oauth_error(response, 400)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "multipart/form-data; boundary=x"])
async def test_wrong_content_types_are_415(client, make_tenant, path, content_type):
    tenant = await make_tenant()
    response = await client.post(
        path, content=b"grant_type=x", headers={"content-type": content_type, **tenant.headers}
    )
    _assert_oauth_error(response, 415)


@pytest.mark.parametrize("path", PATHS)
async def test_megabyte_bodies_are_413(client, make_tenant, path):
    tenant = await make_tenant()
    response = await client.post(path, content=b"a=" + b"x" * 1_100_000, headers={**FORM, **tenant.headers})
    _assert_oauth_error(response, 413)


async def test_empty_values_count_as_omitted(client, make_tenant):
    tenant = await make_tenant()
    response = await client.post(
        "/oauth/token", content=b"grant_type=client_credentials&scope=&resource=", headers={**FORM, **tenant.headers}
    )
    assert response.status_code == 200, response.text


async def test_odd_unicode_and_huge_headers_are_clean_errors(client, make_tenant):
    tenant = await make_tenant()
    weird = await client.post(
        "/oauth/token",
        json={"grant_type": "refresh_token", "refresh_token": "pdr-\u202e\ufeff\U0001f600" * 50},
        headers=tenant.headers,
    )
    _assert_oauth_error(weird, 400, "invalid_grant")
    huge = await client.post(
        "/oauth/token",
        json={"grant_type": "client_credentials"},
        headers={"PLAID-CLIENT-ID": "x" * 20_000, "PLAID-SECRET": "y"},
    )
    _assert_oauth_error(huge, 401, "invalid_client")


async def test_nothing_is_stored_by_a_refused_request(client, make_tenant, sessions):
    tenant = await make_tenant()
    for body in (
        {"grant_type": "client_credentials", "scope": "not-allowed"},
        {"grant_type": "client_credentials", "resource": "https://elsewhere"},
        {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": "usr_x"},
    ):
        response = await client.post("/oauth/token", json=body, headers=tenant.headers)
        assert response.status_code == 400
    async with sessions() as session:
        count = await session.scalar(select(func.count()).select_from(Grant).where(Grant.tenant_id == tenant.tenant_id))
    assert count == 0


async def test_get_on_a_post_endpoint_is_a_json_405(client):
    response = await client.get("/oauth/token")
    assert response.status_code == 405
    assert response.json()["request_id"]
