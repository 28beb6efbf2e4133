"""``/admin/v1/audiences``: list, create, rename, member mapping; URNs (with ':') as path parameters."""

from __future__ import annotations

from typing import Any

import pytest

from tests.admin_helpers import assert_error, audit_events, bearer, issue_key, new_urn

CRA_URNS = {
    "urn:plaid:params:cra-partner:experian",
    "urn:plaid:params:cra-partner:fannie-mae",
    "urn:plaid:params:cra-partner:freddie-mac",
}


@pytest.fixture(scope="module")
async def admin_key(runtime):
    return await issue_key(runtime, "write")


@pytest.fixture(scope="module")
def headers(admin_key):
    return bearer(admin_key[1])


async def _audience(client: Any, headers: dict[str, str], display_name: str = "Test CRA") -> str:
    urn = new_urn()
    response = await client.post(
        "/admin/v1/audiences", json={"urn": urn, "display_name": display_name}, headers=headers
    )
    assert response.status_code == 201, response.text
    return urn


async def test_seeded_cra_audiences_are_listed(client, headers):
    response = await client.get("/admin/v1/audiences", headers=headers)
    assert response.status_code == 200
    listed = {a["urn"]: a for a in response.json()["data"]}
    assert set(listed) >= CRA_URNS
    assert listed["urn:plaid:params:cra-partner:experian"]["display_name"] == "Experian"
    urns = [a["urn"] for a in response.json()["data"]]
    assert urns == sorted(urns)


async def test_create_and_get_by_urn_with_colons(client, runtime, headers, admin_key):
    urn = new_urn()
    response = await client.post(
        "/admin/v1/audiences", json={"urn": urn, "display_name": " Acme CRA "}, headers=headers
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["urn"], body["display_name"], body["members"]) == (urn, "Acme CRA", [])
    fetched = await client.get(f"/admin/v1/audiences/{urn}", headers=headers)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["urn"] == urn
    (event,) = await audit_events(runtime, "audience.created", urn=urn)
    assert event.actor == f"admin:{admin_key[0]}"


async def test_duplicate_urn_is_409(client, headers):
    urn = await _audience(client, headers)
    response = await client.post("/admin/v1/audiences", json={"urn": urn, "display_name": "again"}, headers=headers)
    assert_error(response, 409, "conflict", urn)
    seeded = "urn:plaid:params:cra-partner:experian"
    response = await client.post("/admin/v1/audiences", json={"urn": seeded, "display_name": "x"}, headers=headers)
    assert_error(response, 409, "conflict")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"display_name": "x"}, "missing required field `urn`"),
        ({"urn": "urn:a:b"}, "missing required field `display_name`"),
        ({"urn": "experian", "display_name": "x"}, "urn must look like urn:"),
        ({"urn": "urn:", "display_name": "x"}, "urn must look like"),
        ({"urn": "urn:plaid:", "display_name": "x"}, "urn must look like"),
        ({"urn": "urn:-bad:x", "display_name": "x"}, "urn must look like"),
        ({"urn": "urn:a/b:c", "display_name": "x"}, "urn must look like"),
        ({"urn": "urn:plaid:a/b", "display_name": "x"}, "'/'"),
        ({"urn": "urn:plaid:a,b", "display_name": "x"}, "urn must look like"),
        ({"urn": "urn:plaid:a b", "display_name": "x"}, "urn must look like"),
        ({"urn": "urn:plaid:a?b", "display_name": "x"}, "urn must look like"),
        ({"urn": "urn:plaid:" + "a" * 250, "display_name": "x"}, "at most 255"),
        ({"urn": "urn:plaid:\u0000", "display_name": "x"}, "NUL"),
        ({"urn": 7, "display_name": "x"}, "$.urn"),
        ({"urn": "urn:test:ok", "display_name": ""}, "display_name must be 1 to 200"),
        ({"urn": "urn:test:ok", "display_name": "a\tb"}, "display_name must be"),
        ({"urn": "urn:test:ok", "display_name": "x" * 201}, "display_name must be"),
        ({"urn": "urn:test:ok", "display_name": "x", "members": []}, "unknown field `members`"),
    ],
)
async def test_create_validation(client, headers, body, fragment):
    response = await client.post("/admin/v1/audiences", json=body, headers=headers)
    assert_error(response, 422, "validation_failed", fragment)


async def test_rename(client, headers):
    urn = await _audience(client, headers, "old")
    response = await client.patch(f"/admin/v1/audiences/{urn}", json={"display_name": "new"}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["display_name"] == "new"
    assert (await client.get(f"/admin/v1/audiences/{urn}", headers=headers)).json()["display_name"] == "new"


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({}, 422, "display_name"),
        ({"display_name": ""}, 422, "display_name must be"),
        ({"display_name": "x", "urn": "urn:x:y"}, 422, "unknown field `urn`"),
    ],
)
async def test_rename_validation(client, headers, body, status, fragment):
    urn = await _audience(client, headers)
    response = await client.patch(f"/admin/v1/audiences/{urn}", json=body, headers=headers)
    assert_error(response, status, "validation_failed", fragment)


@pytest.mark.parametrize("urn", ["urn:test:missing:0000", "nope", "urn:test:%00"])
async def test_unknown_audience_is_404(client, headers, urn):
    assert_error(await client.get(f"/admin/v1/audiences/{urn}", headers=headers), 404, "not_found")
    response = await client.patch(f"/admin/v1/audiences/{urn}", json={"display_name": "x"}, headers=headers)
    assert_error(response, 404, "not_found")


async def test_members_are_mapped_and_unmapped(client, runtime, headers, make_tenant):
    urn = await _audience(client, headers)
    first = await make_tenant("cra one", kind="partner")
    second = await make_tenant("cra two", kind="partner")
    path = f"/admin/v1/audiences/{urn}/members"
    response = await client.put(f"{path}/{first.client_id}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["members"] == [first.client_id]
    again = await client.put(f"{path}/{first.client_id}", headers=headers)
    assert again.json()["members"] == [first.client_id]
    both = (await client.put(f"{path}/{second.client_id}", headers=headers)).json()["members"]
    assert both == sorted([first.client_id, second.client_id])
    listed = {a["urn"]: a for a in (await client.get("/admin/v1/audiences", headers=headers)).json()["data"]}
    assert listed[urn]["members"] == both
    assert len(await audit_events(runtime, "audience.member_added", urn=urn, client_id=first.client_id)) == 1

    removed = await client.delete(f"{path}/{first.client_id}", headers=headers)
    assert removed.status_code == 200, removed.text
    assert removed.json()["members"] == [second.client_id]
    assert len(await audit_events(runtime, "audience.member_removed", urn=urn, client_id=first.client_id)) == 1
    assert_error(await client.delete(f"{path}/{first.client_id}", headers=headers), 404, "not_found", "not a member")


async def test_only_partners_can_be_members(client, headers, make_tenant):
    urn = await _audience(client, headers)
    customer = await make_tenant("a lender")
    response = await client.put(f"/admin/v1/audiences/{urn}/members/{customer.client_id}", headers=headers)
    assert_error(response, 422, "validation_failed", "only partner clients")
    assert (await client.get(f"/admin/v1/audiences/{urn}", headers=headers)).json()["members"] == []


async def test_member_mapping_unknown_ids_are_404(client, headers, make_tenant):
    urn = await _audience(client, headers)
    partner = await make_tenant("p", kind="partner")
    cases = [
        (f"/admin/v1/audiences/{urn}/members/{'0' * 24}", "no tenant"),
        (f"/admin/v1/audiences/urn:test:unknown:1/members/{partner.client_id}", "no audience"),
        (f"/admin/v1/audiences/{urn}/members/%00", "no tenant"),
    ]
    for path, fragment in cases:
        assert_error(await client.put(path, headers=headers), 404, "not_found", fragment)
        assert_error(await client.delete(path, headers=headers), 404, "not_found")


async def test_read_key_can_list_but_not_change_audiences(client, runtime):
    _, key = await issue_key(runtime, "read")
    assert (await client.get("/admin/v1/audiences", headers=bearer(key))).status_code == 200
    response = await client.post(
        "/admin/v1/audiences", json={"urn": new_urn(), "display_name": "x"}, headers=bearer(key)
    )
    assert_error(response, 403, "forbidden")
