"""``/admin/v1/tenants/{client_id}/policies``: upsert, list, delete; targets are audience URNs or client ids."""

from __future__ import annotations

from typing import Any

import pytest

from tests.admin_helpers import assert_error, audit_events, bearer, issue_key, new_urn

EXPERIAN = "urn:plaid:params:cra-partner:experian"


@pytest.fixture(scope="module")
async def headers(runtime):
    _, key = await issue_key(runtime, "write")
    return bearer(key)


async def _put(client: Any, headers: dict[str, str], client_id: str, **body: Any) -> Any:
    return await client.put(f"/admin/v1/tenants/{client_id}/policies", json=body, headers=headers)


async def _audience(client: Any, headers: dict[str, str]) -> str:
    urn = new_urn()
    response = await client.post("/admin/v1/audiences", json={"urn": urn, "display_name": "x"}, headers=headers)
    assert response.status_code == 201
    return urn


async def test_upsert_list_and_delete(client, runtime, headers, make_tenant):
    lender = await make_tenant("lender")
    other = await make_tenant("other client")
    urn = await _audience(client, headers)

    created = await _put(
        client, headers, lender.client_id, target=urn, allowed_scopes=["user:read"], access_token_ttl=600
    )
    assert created.status_code == 201, created.text
    assert created.json()["target"] == urn
    assert created.json()["target_kind"] == "audience"
    assert created.json()["allowed_scopes"] == ["user:read"]
    assert created.json()["access_token_ttl"] == 600
    assert created.json()["refresh_token_ttl"] is None

    replaced = await _put(
        client,
        headers,
        lender.client_id,
        target=urn,
        allowed_scopes=["user:write", "user:read"],
        refresh_token_ttl=3600,
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["allowed_scopes"] == ["user:read", "user:write"]
    assert replaced.json()["access_token_ttl"] is None
    assert replaced.json()["refresh_token_ttl"] == 3600
    assert replaced.json()["created_at"] == created.json()["created_at"]

    to_client = await _put(client, headers, lender.client_id, target=other.client_id)
    assert to_client.status_code == 201, to_client.text
    assert (to_client.json()["target"], to_client.json()["target_kind"]) == (other.client_id, "client")
    assert to_client.json()["allowed_scopes"] is None

    listed = (await client.get(f"/admin/v1/tenants/{lender.client_id}/policies", headers=headers)).json()["data"]
    assert [(p["target"], p["target_kind"]) for p in listed] == sorted([(urn, "audience"), (other.client_id, "client")])
    by_target = {p["target"]: p for p in listed}
    assert by_target[urn]["refresh_token_ttl"] == 3600

    deleted = await client.delete(f"/admin/v1/tenants/{lender.client_id}/policies/{urn}", headers=headers)
    assert deleted.status_code == 204, deleted.text
    listed = (await client.get(f"/admin/v1/tenants/{lender.client_id}/policies", headers=headers)).json()["data"]
    assert [p["target"] for p in listed] == [other.client_id]
    again = await client.delete(f"/admin/v1/tenants/{lender.client_id}/policies/{urn}", headers=headers)
    assert_error(again, 404, "not_found", "no policy")

    events = await audit_events(runtime, "policy.upserted", client_id=lender.client_id, target=urn)
    assert [e.detail["created"] for e in sorted(events, key=lambda e: e.id)] == [True, False]
    assert all(e.tenant_id == lender.tenant_id for e in events)
    assert len(await audit_events(runtime, "policy.deleted", client_id=lender.client_id, target=urn)) == 1


async def test_policies_are_per_tenant(client, headers, make_tenant):
    first, second = await make_tenant("a"), await make_tenant("b")
    assert (await _put(client, headers, first.client_id, target=EXPERIAN)).status_code in {200, 201}
    listed = (await client.get(f"/admin/v1/tenants/{second.client_id}/policies", headers=headers)).json()["data"]
    assert listed == []


async def test_delete_client_target(client, headers, make_tenant):
    lender, other = await make_tenant("lender"), await make_tenant("other")
    await _put(client, headers, lender.client_id, target=other.client_id)
    path = f"/admin/v1/tenants/{lender.client_id}/policies/{other.client_id}"
    assert (await client.delete(path, headers=headers)).status_code == 204
    assert (await client.get(f"/admin/v1/tenants/{lender.client_id}/policies", headers=headers)).json()["data"] == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "missing required field `target`"),
        ({"target": 5}, "$.target"),
        ({"target": "urn:test:not-registered:1"}, "target must be a registered audience urn or an existing client_id"),
        ({"target": "f" * 24}, "target must be a registered audience urn"),
        ({"target": ""}, "target must be"),
        ({"target": "x" * 300}, "target must be"),
        ({"target": "a\u0000"}, "`$.target` contains a NUL byte"),
        ({"target": EXPERIAN, "allowed_scopes": []}, "allowed_scopes must not be empty"),
        ({"target": EXPERIAN, "allowed_scopes": ["no spaces allowed"]}, "valid scope tokens"),
        ({"target": EXPERIAN, "allowed_scopes": "user:read"}, "$.allowed_scopes"),
        ({"target": EXPERIAN, "access_token_ttl": 30}, "access_token_ttl must be between 60 and 86400"),
        ({"target": EXPERIAN, "access_token_ttl": 10**40}, "access_token_ttl must be between"),
        ({"target": EXPERIAN, "refresh_token_ttl": 299}, "refresh_token_ttl must be between 300"),
        ({"target": EXPERIAN, "refresh_token_ttl": 1.5}, "$.refresh_token_ttl"),
        ({"target": EXPERIAN, "audience": "x"}, "unknown field `audience`"),
    ],
)
async def test_upsert_validation(client, headers, make_tenant, body, fragment):
    lender = await make_tenant("lender")
    response = await client.put(f"/admin/v1/tenants/{lender.client_id}/policies", json=body, headers=headers)
    assert_error(response, 422, "validation_failed", fragment)
    listed = (await client.get(f"/admin/v1/tenants/{lender.client_id}/policies", headers=headers)).json()["data"]
    assert listed == []


async def test_a_tenant_cannot_target_itself(client, headers, make_tenant):
    lender = await make_tenant("lender")
    response = await _put(client, headers, lender.client_id, target=lender.client_id)
    assert_error(response, 422, "validation_failed", "itself")


async def test_unknown_tenant_is_404(client, headers):
    missing = "0" * 24
    assert_error(await _put(client, headers, missing, target=EXPERIAN), 404, "not_found", "no tenant")
    assert_error(await client.get(f"/admin/v1/tenants/{missing}/policies", headers=headers), 404, "not_found")
    path = f"/admin/v1/tenants/{missing}/policies/{EXPERIAN}"
    assert_error(await client.delete(path, headers=headers), 404, "not_found")


@pytest.mark.parametrize("target", ["urn:test:never:registered", "f" * 24, "%00"])
async def test_delete_unknown_target_is_404(client, headers, make_tenant, target):
    lender = await make_tenant("lender")
    response = await client.delete(f"/admin/v1/tenants/{lender.client_id}/policies/{target}", headers=headers)
    assert_error(response, 404, "not_found")


async def test_read_key_lists_but_cannot_change_policies(client, runtime, headers, make_tenant):
    lender = await make_tenant("lender")
    await _put(client, headers, lender.client_id, target=EXPERIAN)
    _, key = await issue_key(runtime, "read")
    listed = await client.get(f"/admin/v1/tenants/{lender.client_id}/policies", headers=bearer(key))
    assert [p["target"] for p in listed.json()["data"]] == [EXPERIAN]
    path = f"/admin/v1/tenants/{lender.client_id}/policies/{EXPERIAN}"
    assert_error(await client.delete(path, headers=bearer(key)), 403, "forbidden")
    assert_error(await _put(client, bearer(key), lender.client_id, target=EXPERIAN), 403, "forbidden")
