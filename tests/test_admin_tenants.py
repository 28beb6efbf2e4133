"""``/admin/v1/tenants``: create, read, list (keyset pagination), change, disable; every 4xx path."""

from __future__ import annotations

import json
from typing import Any

import pytest

from broker import errors
from broker.http.auth import Credentials
from broker.tenants import clients
from tests.admin_helpers import assert_error, audit_events, bearer, issue_key

TENANT_FIELDS = {
    "client_id",
    "name",
    "kind",
    "status",
    "allowed_scopes",
    "default_scopes",
    "access_token_ttl",
    "refresh_token_ttl",
    "created_at",
    "updated_at",
}


@pytest.fixture(scope="module")
async def headers(runtime):
    _, key = await issue_key(runtime, "write")
    return bearer(key)


async def _create(client: Any, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    response = await client.post("/admin/v1/tenants", json={"name": "t", **fields}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _authenticates(runtime, client_id: str, secret: str) -> bool:
    try:
        await clients.authenticate(runtime, Credentials(client_id, secret))
    except errors.InvalidClient:
        return False
    return True


# --- create -------------------------------------------------------------------------------------------


async def test_create_returns_the_secret_once(client, runtime, headers):
    response = await client.post("/admin/v1/tenants", json={"name": "  Acme Lending  "}, headers=headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == TENANT_FIELDS | {"secret"}
    assert len(body["client_id"]) == 24
    assert body["name"] == "Acme Lending"
    assert body["kind"] == "customer"
    assert body["status"] == "active"
    assert body["allowed_scopes"] == ["exchange", "mcp:dashboard", "user:read", "user:write"]
    assert body["default_scopes"] == ["exchange", "user:read", "user:write"]
    assert body["access_token_ttl"] is None
    assert await _authenticates(runtime, body["client_id"], body["secret"])
    fetched = await client.get(f"/admin/v1/tenants/{body['client_id']}", headers=headers)
    assert fetched.status_code == 200
    assert set(fetched.json()) == TENANT_FIELDS
    assert body["secret"] not in fetched.text


async def test_create_with_every_field(client, headers):
    body = await _create(
        client,
        headers,
        name="Partner",
        kind="partner",
        allowed_scopes=["user:read", "exchange", "user:read"],
        default_scopes=["user:read"],
        access_token_ttl=600,
        refresh_token_ttl=86_400,
    )
    assert body["kind"] == "partner"
    assert body["allowed_scopes"] == ["exchange", "user:read"]
    assert body["default_scopes"] == ["user:read"]
    assert (body["access_token_ttl"], body["refresh_token_ttl"]) == (600, 86_400)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "missing required field `name`"),
        ({"name": 1}, "$.name"),
        ({"name": None}, "$.name"),
        ({"name": "   "}, "name must be 1 to 200 characters"),
        ({"name": "x" * 201}, "name must be 1 to 200 characters"),
        ({"name": "a\u0000b"}, "`$.name` contains a NUL byte"),
        ({"name": "x" * 9000}, "`$.name` is too long"),
        ({"name": "t", "kind": "bank"}, "kind must be one of customer, partner"),
        ({"name": "t", "kind": 3}, "$.kind"),
        ({"name": "t", "status": "disabled"}, "unknown field `status`"),
        ({"name": "t", "secret": "mine"}, "unknown field `secret`"),
        ({"name": "t", "allowed_scopes": "user:read"}, "$.allowed_scopes"),
        ({"name": "t", "allowed_scopes": ["user:read", 5]}, "$.allowed_scopes[1]"),
        ({"name": "t", "allowed_scopes": ["bad scope"]}, "allowed_scopes must be a list of valid scope tokens"),
        ({"name": "t", "allowed_scopes": ["a\u0000"]}, "`$.allowed_scopes[0]` contains a NUL byte"),
        ({"name": "t", "allowed_scopes": [f"s{i}" for i in range(40)]}, "allowed_scopes must be a list"),
        ({"name": "t", "default_scopes": ["mcp:dashboard"], "allowed_scopes": ["user:read"]}, "subset"),
        ({"name": "t", "access_token_ttl": 59}, "access_token_ttl must be between 60 and 86400"),
        ({"name": "t", "access_token_ttl": 10**30}, "access_token_ttl must be between"),
        ({"name": "t", "access_token_ttl": -1}, "access_token_ttl must be between"),
        ({"name": "t", "access_token_ttl": 900.5}, "$.access_token_ttl"),
        ({"name": "t", "access_token_ttl": True}, "$.access_token_ttl"),
        ({"name": "t", "access_token_ttl": "900"}, "$.access_token_ttl"),
        ({"name": "t", "refresh_token_ttl": 10}, "refresh_token_ttl must be between 300"),
        ({"name": "t", "x\u0000": 1}, "a field name in `$` contains a NUL byte"),
    ],
)
async def test_create_validation(client, headers, body, fragment):
    response = await client.post("/admin/v1/tenants", json=body, headers=headers)
    assert_error(response, 422, "validation_failed", fragment)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "body must be a JSON object"),
        (b"   ", "body must be a JSON object"),
        (b"{", "not valid JSON"),
        (b"[]", "body must be a JSON object"),
        (b'"name"', "body must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"name": "a", "name": "b"}', "repeated"),
        (b'{"name": "\\ud800"}', "`$.name` is not valid UTF-8"),
        (b'{"name": ' + b"[" * 40 + b"]" * 40 + b"}", "nested too deeply"),
        (b'{"name": "t", "access_token_ttl": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"name": "t", "access_token_ttl": NaN}', "$.access_token_ttl"),
        (b'{"name": "t", "access_token_ttl": 1e400}', "$.access_token_ttl"),
        (json.dumps({f"f{i}": 1 for i in range(70)}).encode(), "too many fields"),
    ],
)
async def test_malformed_bodies_are_422(client, headers, raw, fragment):
    response = await client.post(
        "/admin/v1/tenants", content=raw, headers={**headers, "Content-Type": "application/json"}
    )
    assert_error(response, 422, "validation_failed", fragment)


async def test_wrong_content_type_is_415(client, headers):
    response = await client.post(
        "/admin/v1/tenants", content=b"name=x", headers={**headers, "Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_error(response, 415, "validation_failed", "application/json")


async def test_huge_body_is_413(client, headers):
    response = await client.post("/admin/v1/tenants", json={"name": "x" * 70_000}, headers=headers)
    assert response.status_code == 413
    assert response.json()["error"]["message"] == "request body too large"


# --- read ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_id", ["0" * 24, "nope", "%00", "a%00b", "%ff%fe", "x" * 600])
async def test_unknown_tenant_is_404(client, headers, client_id):
    response = await client.get(f"/admin/v1/tenants/{client_id}", headers=headers)
    assert_error(response, 404, "not_found")


# --- list ---------------------------------------------------------------------------------------------


async def _walk(client: Any, headers: dict[str, str], query: str) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    after = None
    while True:
        suffix = f"&after={after}" if after else ""
        response = await client.get(f"/admin/v1/tenants?{query}{suffix}", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["data"])
        after = body["next_after"]
        if after is None:
            return pages
        assert after == body["data"][-1]["client_id"]


async def test_list_walks_every_tenant_once_in_client_id_order(client, headers):
    created = {(await _create(client, headers, name=f"page {i}"))["client_id"] for i in range(5)}
    pages = await _walk(client, headers, "limit=2")
    assert all(len(page) <= 2 for page in pages)
    assert all(len(page) == 2 for page in pages[:-1])
    ids = [t["client_id"] for page in pages for t in page]
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids))
    assert created <= set(ids)
    assert all(set(t) == TENANT_FIELDS for page in pages for t in page)


async def test_list_filters_by_kind(client, headers):
    partner = (await _create(client, headers, kind="partner"))["client_id"]
    customer = (await _create(client, headers, kind="customer"))["client_id"]
    pages = await _walk(client, headers, "kind=partner&limit=200")
    listed = [t for page in pages for t in page]
    assert {t["kind"] for t in listed} == {"partner"}
    assert partner in {t["client_id"] for t in listed}
    assert customer not in {t["client_id"] for t in listed}


async def test_list_default_limit_and_after(client, headers):
    for _ in range(3):
        await _create(client, headers)
    body = (await client.get("/admin/v1/tenants?limit=1", headers=headers)).json()
    first = body["data"][0]["client_id"]
    following = (await client.get(f"/admin/v1/tenants?limit=1&after={first}", headers=headers)).json()
    assert following["data"][0]["client_id"] > first
    everything = (await client.get("/admin/v1/tenants", headers=headers)).json()
    assert 3 <= len(everything["data"]) <= 50


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("limit=0", "limit must be between 1 and 200"),
        ("limit=201", "limit must be between 1 and 200"),
        ("limit=-1", "limit must be an integer"),
        ("limit=abc", "limit must be an integer"),
        ("limit=99999999999999999999", "limit must be an integer"),
        ("limit=1&limit=2", "'limit' is repeated"),
        ("kind=bank", "kind must be one of customer, partner"),
        ("after=%00", "'after' contains a NUL byte"),
        ("after=" + "a" * 200, "after must be a client id"),
    ],
)
async def test_list_parameter_validation(client, headers, query, fragment):
    response = await client.get(f"/admin/v1/tenants?{query}", headers=headers)
    assert_error(response, 422, "validation_failed", fragment)


# --- update and disable -------------------------------------------------------------------------------


async def test_patch_changes_only_named_fields(client, runtime, headers):
    tenant = await _create(client, headers, name="before", access_token_ttl=600, refresh_token_ttl=3600)
    path = f"/admin/v1/tenants/{tenant['client_id']}"
    response = await client.patch(
        path,
        json={"name": "after", "allowed_scopes": ["user:read", "exchange"], "default_scopes": ["user:read"]},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "after"
    assert body["allowed_scopes"] == ["exchange", "user:read"]
    assert body["default_scopes"] == ["user:read"]
    assert body["access_token_ttl"] == 600
    assert body["updated_at"] > tenant["updated_at"]
    (event,) = await audit_events(runtime, "tenant.updated", client_id=tenant["client_id"])
    assert event.detail["fields"] == ["allowed_scopes", "default_scopes", "name"]


async def test_patch_null_lifetime_resets_it(client, headers):
    tenant = await _create(client, headers, access_token_ttl=600, refresh_token_ttl=3600)
    path = f"/admin/v1/tenants/{tenant['client_id']}"
    body = (await client.patch(path, json={"access_token_ttl": None}, headers=headers)).json()
    assert body["access_token_ttl"] is None
    assert body["refresh_token_ttl"] == 3600
    body = (await client.patch(path, json={"refresh_token_ttl": 7200}, headers=headers)).json()
    assert body["refresh_token_ttl"] == 7200


async def test_patch_status_disables_and_reenables(client, runtime, headers):
    tenant = await _create(client, headers)
    path = f"/admin/v1/tenants/{tenant['client_id']}"
    assert (await client.patch(path, json={"status": "disabled"}, headers=headers)).json()["status"] == "disabled"
    assert not await _authenticates(runtime, tenant["client_id"], tenant["secret"])
    assert (await client.patch(path, json={"status": "active"}, headers=headers)).json()["status"] == "active"
    assert await _authenticates(runtime, tenant["client_id"], tenant["secret"])


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "nothing to change"),
        ({"kind": "partner"}, "unknown field `kind`"),
        ({"name": None}, "$.name"),
        ({"name": ""}, "name must be"),
        ({"status": "deleted"}, "status must be one of active, disabled"),
        ({"allowed_scopes": None}, "$.allowed_scopes"),
        ({"allowed_scopes": ["user:read"]}, "default_scopes must be a subset"),
        ({"access_token_ttl": 1}, "access_token_ttl must be between"),
        ({"refresh_token_ttl": "x"}, "$.refresh_token_ttl"),
    ],
)
async def test_patch_validation(client, headers, body, fragment):
    tenant = await _create(client, headers)
    response = await client.patch(f"/admin/v1/tenants/{tenant['client_id']}", json=body, headers=headers)
    assert_error(response, 422, "validation_failed", fragment)


async def test_patch_unknown_tenant_is_404(client, headers):
    response = await client.patch("/admin/v1/tenants/" + "f" * 24, json={"name": "x"}, headers=headers)
    assert_error(response, 404, "not_found", "no tenant")


async def test_disable_blocks_authentication_and_is_idempotent(client, runtime, headers):
    tenant = await _create(client, headers)
    assert await _authenticates(runtime, tenant["client_id"], tenant["secret"])
    path = f"/admin/v1/tenants/{tenant['client_id']}/disable"
    first = await client.post(path, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "disabled"
    assert "secret" not in first.json()
    second = await client.post(path, headers=headers)
    assert second.json()["status"] == "disabled"
    assert not await _authenticates(runtime, tenant["client_id"], tenant["secret"])
    assert len(await audit_events(runtime, "tenant.disabled", client_id=tenant["client_id"])) == 1


async def test_disable_unknown_tenant_is_404(client, headers):
    assert_error(await client.post("/admin/v1/tenants/nope/disable", headers=headers), 404, "not_found")
