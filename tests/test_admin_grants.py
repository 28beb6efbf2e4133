"""Grants admin: lineage trees per user, tenant and grant; revoking a grant (cascade); removing one party."""

from __future__ import annotations

from typing import Any

import pytest

from tests.admin_helpers import assert_error, audit_events, bearer, issue_key
from tests.oauth_helpers import EXCHANGE, MULTI, OAUTH_USER, USER, build_world, introspect, post_token, token_ok


@pytest.fixture(scope="module")
async def admin(runtime):
    name, key = await issue_key(runtime, "write")
    return name, bearer(key)


async def _shared_world(client, sessions, make_tenant) -> tuple[Any, dict[str, Any], dict[str, dict[str, Any]]]:
    world = await build_world(client, sessions, make_tenant)
    shared = await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=world.user["user_id"],
        subject_token_type=MULTI,
        audience=f"{world.urn_a},{world.urn_b}",
    )
    forks = {
        p.client_id: await token_ok(client, p, grant_type="refresh_token", refresh_token=shared["refresh_token"])
        for p in (world.partner_a, world.partner_b)
    }
    return world, shared, forks


async def _refresh(client, creds, token):
    return await post_token(client, creds, grant_type="refresh_token", refresh_token=token)


async def test_a_users_grants_as_lineage_trees(client, sessions, make_tenant, admin):
    _, headers = admin
    world, _, _ = await _shared_world(client, sessions, make_tenant)
    own = await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=world.user["user_id"],
        subject_token_type=USER,
        audience=world.lender.client_id,
    )
    await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=own["refresh_token"],
        subject_token_type=OAUTH_USER,
        audience=world.other.client_id,
    )
    response = await client.get(f"/admin/v1/users/{world.user['user_id']}/grants", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tenant"] == world.lender.client_id
    kinds = sorted(g["kind"] for g in body["grants"])
    assert kinds == ["multi_party", "user"]
    (shared,) = [g for g in body["grants"] if g["kind"] == "multi_party"]
    (user_grant,) = [g for g in body["grants"] if g["kind"] == "user"]
    assert shared["holder"] is None
    assert {p["client_id"] for p in shared["parties"]} == {world.partner_a.client_id, world.partner_b.client_id}
    assert sorted(c["holder"] for c in shared["children"]) == sorted(
        [world.partner_a.client_id, world.partner_b.client_id]
    )
    assert all(c["kind"] == "party" and c["live"] for c in shared["children"])
    (exchanged,) = user_grant["children"]
    assert (exchanged["kind"], exchanged["holder"], exchanged["requester"]) == (
        "exchange",
        world.other.client_id,
        world.lender.client_id,
    )
    assert exchanged["user_id"] == world.user["user_id"]


async def test_a_tenants_trees_page_newest_first(client, make_tenant, admin):
    _, headers = admin
    lender = await make_tenant("paged lender")
    for _ in range(3):
        await token_ok(client, lender, grant_type="client_credentials")
    first = await client.get(f"/admin/v1/tenants/{lender.client_id}/grants", params={"limit": 2}, headers=headers)
    assert first.status_code == 200, first.text
    page = first.json()
    assert len(page["data"]) == 2
    rest = (
        await client.get(
            f"/admin/v1/tenants/{lender.client_id}/grants",
            params={"limit": 2, "after": page["next_after"]},
            headers=headers,
        )
    ).json()
    assert len(rest["data"]) == 1
    assert rest["next_after"] is None
    created = [g["created_at"] for g in page["data"] + rest["data"]]
    assert created == sorted(created, reverse=True)
    assert len({g["id"] for g in page["data"] + rest["data"]}) == 3
    live = await client.get(f"/admin/v1/tenants/{lender.client_id}/grants", params={"live": "false"}, headers=headers)
    assert live.json()["data"] == []


async def test_revoking_a_grant_cascades_and_is_audited(client, sessions, make_tenant, admin, runtime):
    name, headers = admin
    world, shared, forks = await _shared_world(client, sessions, make_tenant)
    tree = (await client.get(f"/admin/v1/users/{world.user['user_id']}/grants", headers=headers)).json()
    (root,) = tree["grants"]
    response = await client.post(f"/admin/v1/grants/{root['id']}/revoke", headers=headers)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["revoked_count"] == 3
    assert set(result["revoked_grants"]) == {root["id"], *(c["id"] for c in root["children"])}
    for partner in (world.partner_a, world.partner_b):
        refused = await _refresh(client, partner, forks[partner.client_id]["refresh_token"])
        assert refused.json()["error"] == "invalid_grant"
        assert (await introspect(client, partner, forks[partner.client_id]["access_token"]))["active"] is False
    assert (await _refresh(client, world.partner_a, shared["refresh_token"])).json()["error"] == "invalid_grant"
    (event,) = await audit_events(runtime, "grant.revoked", reason="admin.revoked")
    assert event.actor == f"admin:{name}"
    again = await client.post(f"/admin/v1/grants/{root['id']}/revoke", headers=headers)
    assert again.json()["revoked_count"] == 0
    after = (await client.get(f"/admin/v1/grants/{root['id']}", headers=headers)).json()
    assert after["revoked_reason"] == "admin.revoked"
    assert not after["live"]
    assert not any(c["live"] for c in after["children"])


async def test_removing_one_party_leaves_the_others(client, sessions, make_tenant, admin, runtime):
    name, headers = admin
    world, shared, forks = await _shared_world(client, sessions, make_tenant)
    tree = (await client.get(f"/admin/v1/users/{world.user['user_id']}/grants", headers=headers)).json()
    (root,) = tree["grants"]
    a, b = world.partner_a, world.partner_b
    response = await client.delete(f"/admin/v1/grants/{root['id']}/parties/{a.client_id}", headers=headers)
    assert response.status_code == 200, response.text
    (lineage,) = [c["id"] for c in root["children"] if c["holder"] == a.client_id]
    assert response.json()["revoked_grants"] == [lineage]
    # the removed party's lineage is dead and it may not fork again
    assert (await _refresh(client, a, forks[a.client_id]["refresh_token"])).json()["error"] == "invalid_grant"
    assert (await _refresh(client, a, shared["refresh_token"])).json()["error"] == "invalid_grant"
    # the other party keeps its lineage, and may still use the shared token; nothing was reissued
    kept = await _refresh(client, b, forks[b.client_id]["refresh_token"])
    assert kept.status_code == 200, kept.text
    assert (await _refresh(client, b, shared["refresh_token"])).status_code == 200
    assert (await introspect(client, world.lender, shared["access_token"]))["active"] is True
    after = (await client.get(f"/admin/v1/grants/{root['id']}", headers=headers)).json()
    assert after["live"]
    withdrawn = {p["client_id"]: p["withdrawn_at"] for p in after["parties"]}
    assert withdrawn[a.client_id] is not None
    assert withdrawn[b.client_id] is None
    (event,) = await audit_events(runtime, "party.removed", party=a.client_id)
    assert event.actor == f"admin:{name}"
    assert event.grant_id is not None
    # removing it again, or a client that never was a party, is 404
    again = await client.delete(f"/admin/v1/grants/{root['id']}/parties/{a.client_id}", headers=headers)
    assert_error(again, 404, "not_found")
    stranger = await client.delete(f"/admin/v1/grants/{root['id']}/parties/{world.outsider.client_id}", headers=headers)
    assert_error(stranger, 404, "not_found")
    not_shared = await client.delete(f"/admin/v1/grants/{lineage}/parties/{b.client_id}", headers=headers)
    assert_error(not_shared, 404, "not_found", "multi-party")


async def test_grants_admin_errors(client, runtime, admin, make_tenant):
    _, headers = admin
    lender = await make_tenant("grants errors")
    unknown = "00000000-0000-0000-0000-000000000000"
    assert_error(await client.get(f"/admin/v1/grants/{unknown}", headers=headers), 404, "not_found")
    assert_error(await client.get("/admin/v1/grants/not-a-uuid", headers=headers), 404, "not_found")
    assert_error(await client.post(f"/admin/v1/grants/{unknown}/revoke", headers=headers), 404, "not_found")
    assert_error(await client.get("/admin/v1/users/usr_nobody/grants", headers=headers), 404, "not_found")
    assert_error(
        await client.get("/admin/v1/tenants/000000000000000000000000/grants", headers=headers), 404, "not_found"
    )
    _, read_key = await issue_key(runtime, "read")
    assert_error(await client.post(f"/admin/v1/grants/{unknown}/revoke", headers=bearer(read_key)), 403, "forbidden")
    for params in ({"limit": "0"}, {"limit": "201"}, {"live": "maybe"}, {"after": "garbage"}):
        response = await client.get(f"/admin/v1/tenants/{lender.client_id}/grants", params=params, headers=headers)
        assert_error(response, 422, "validation_failed")
