"""``GET /admin/v1/audit-events`` (filters, keyset pages) and ``GET /admin/v1/users/{user_id}/ledger``."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.admin_helpers import assert_error, bearer, issue_key
from tests.oauth_helpers import EXCHANGE, MULTI, build_world, introspect, revoke, token_ok


@pytest.fixture(scope="module")
async def headers(runtime):
    _, key = await issue_key(runtime, "read")
    return bearer(key)


@pytest.fixture(scope="module")
async def story(client, sessions, make_tenant) -> dict[str, Any]:
    """A lender shares a consumer with two partners; each forks and refreshes, introspects; the lender revokes."""
    started = datetime.now(UTC)
    world = await build_world(client, sessions, make_tenant)
    shared = await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=world.user["user_id"],
        subject_token_type=MULTI,
        audience=f"{world.urn_a},{world.urn_b}",
    )
    lineages = {}
    for partner in (world.partner_a, world.partner_b):
        forked = await token_ok(client, partner, grant_type="refresh_token", refresh_token=shared["refresh_token"])
        refreshed = await token_ok(client, partner, grant_type="refresh_token", refresh_token=forked["refresh_token"])
        assert (await introspect(client, partner, refreshed["access_token"]))["active"] is True
        lineages[partner.client_id] = refreshed
    await revoke(client, world.lender, shared["refresh_token"])
    info = await introspect(client, world.lender, shared["access_token"])
    return {"world": world, "shared": shared, "lineages": lineages, "started": started, "info": info}


async def _all_pages(client, headers, **query: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = dict(query)
    while True:
        response = await client.get("/admin/v1/audit-events", params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        events += body["data"]
        if body["next_after"] is None:
            return events
        params["after"] = body["next_after"]


async def test_the_ledger_matches_the_story(client, headers, story):
    world = story["world"]
    lender, a, b = world.lender.client_id, world.partner_a.client_id, world.partner_b.client_id
    response = await client.get(f"/admin/v1/users/{world.user['user_id']}/ledger", headers=headers)
    assert response.status_code == 200, response.text
    ledger = response.json()
    assert ledger["user_id"] == world.user["user_id"]
    assert ledger["tenant"] == lender
    assert ledger["next_after"] is None

    parties = {p["party"]: p for p in ledger["parties"]}
    assert set(parties) == {lender, a, b}
    assert parties[lender]["counts"] == {"consumer": 1, "shared": 1, "revoked": 1}
    for partner in (a, b):
        assert parties[partner]["counts"] == {"received": 1, "used": 2, "introspected": 1}
        assert parties[partner]["name"] in {"partner a", "partner b"}
        assert parties[partner]["first_at"] <= parties[partner]["last_at"]

    entries = [(e["party"], e["activity"], e["action"]) for e in ledger["entries"]]
    assert entries[0] == (lender, "consumer", "user.created")
    assert entries[1] == (lender, "shared", "token.exchanged")
    assert set(entries[2:4]) == {(a, "received", "token.exchanged"), (b, "received", "token.exchanged")}
    assert entries[-1] == (lender, "revoked", "grant.revoked")
    assert Counter(entries[4:-1]) == Counter(
        {
            (a, "used", "token.party_forked"): 1,
            (a, "used", "token.refreshed"): 1,
            (a, "introspected", "token.introspected"): 1,
            (b, "used", "token.party_forked"): 1,
            (b, "used", "token.refreshed"): 1,
            (b, "introspected", "token.introspected"): 1,
        }
    )
    # "through which grant": the shared grant, or each partner's own lineage under it
    (root,) = ledger["grants"]
    assert root["kind"] == "multi_party"
    assert root["id"] == ledger["entries"][1]["grant_id"] == ledger["entries"][-1]["grant_id"]
    assert {p["client_id"] for p in root["parties"]} == {a, b}
    assert {c["holder"] for c in root["children"]} == {a, b}
    assert not root["live"]
    assert not any(c["live"] for c in root["children"])
    lineage_of = {c["holder"]: c["id"] for c in root["children"]}
    for entry in ledger["entries"]:
        if entry["action"] in {"token.party_forked", "token.refreshed", "token.introspected"}:
            assert entry["grant_id"] == lineage_of[entry["party"]]


async def test_ledger_pages_and_errors(client, headers, story):
    user_id = story["world"].user["user_id"]
    first = (await client.get(f"/admin/v1/users/{user_id}/ledger", params={"limit": 2}, headers=headers)).json()
    assert first["next_after"] is not None
    rest = (
        await client.get(
            f"/admin/v1/users/{user_id}/ledger", params={"after": first["next_after"], "limit": 1000}, headers=headers
        )
    ).json()
    whole = (await client.get(f"/admin/v1/users/{user_id}/ledger", headers=headers)).json()
    assert [e["event_id"] for e in first["entries"] + rest["entries"]] == [e["event_id"] for e in whole["entries"]]
    assert first["parties"] == whole["parties"]  # summaries cover the whole history on every page
    assert_error(await client.get("/admin/v1/users/usr_nobody/ledger", headers=headers), 404, "not_found")
    assert_error(
        await client.get(f"/admin/v1/users/{user_id}/ledger", params={"limit": 0}, headers=headers),
        422,
        "validation_failed",
    )


async def test_audit_events_filters(client, headers, story):
    world = story["world"]
    by_user = await _all_pages(client, headers, user_id=world.user["user_id"])
    ledger = (await client.get(f"/admin/v1/users/{world.user['user_id']}/ledger", headers=headers)).json()
    assert sorted(e["id"] for e in by_user) == sorted({e["event_id"] for e in ledger["entries"]})
    assert all(e["tenant"] == world.lender.client_id for e in by_user)

    by_tenant = await _all_pages(client, headers, client_id=world.lender.client_id)
    assert {e["id"] for e in by_user} <= {e["id"] for e in by_tenant}
    assert "tenant.created" in {e["action"] for e in by_tenant}

    shared_grant = ledger["grants"][0]["id"]
    by_grant = await _all_pages(client, headers, grant_id=shared_grant)
    assert [e["action"] for e in by_grant] == ["grant.revoked", "token.exchanged"]  # newest first

    by_party = await _all_pages(client, headers, party=world.partner_a.client_id)
    actions = Counter(e["action"] for e in by_party)
    assert actions["token.party_forked"] == 1
    assert actions["token.introspected"] == 1
    assert actions["token.exchanged"] == 1  # the grant it is a party of
    assert all(e["actor"] != world.partner_b.client_id for e in by_party)

    introspections = await _all_pages(client, headers, user_id=world.user["user_id"], action="token.introspected")
    assert {e["actor"] for e in introspections} == {world.partner_a.client_id, world.partner_b.client_id}
    tokens_only = await _all_pages(client, headers, user_id=world.user["user_id"], action="token.*,grant.revoked")
    assert {e["action"] for e in tokens_only} == {
        "token.exchanged",
        "token.party_forked",
        "token.refreshed",
        "token.introspected",
        "grant.revoked",
    }
    assert await _all_pages(client, headers, user_id=world.user["user_id"], outcome="denied") == []
    before = (story["started"] - timedelta(seconds=1)).isoformat()
    assert await _all_pages(client, headers, user_id=world.user["user_id"], until=before) == []
    assert len(await _all_pages(client, headers, user_id=world.user["user_id"], since=before)) == len(by_user)


async def test_audit_events_pages_in_both_orders(client, headers, story):
    user_id = story["world"].user["user_id"]
    newest_first = await _all_pages(client, headers, user_id=user_id, limit=3)
    oldest_first = await _all_pages(client, headers, user_id=user_id, limit=3, order="asc")
    assert [e["id"] for e in newest_first] == sorted((e["id"] for e in newest_first), reverse=True)
    assert [e["id"] for e in oldest_first] == [e["id"] for e in reversed(newest_first)]
    event = newest_first[0]
    assert set(event) == {
        "id",
        "occurred_at",
        "tenant",
        "actor",
        "action",
        "outcome",
        "request_id",
        "grant_id",
        "user_id",
        "detail",
        "sealed",
    }
    for token in (story["shared"]["refresh_token"], story["shared"]["access_token"]):
        assert token not in str(newest_first)


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ({"limit": "0"}, 422, "validation_failed"),
        ({"limit": "501"}, 422, "validation_failed"),
        ({"limit": "x"}, 422, "validation_failed"),
        ({"after": "-1"}, 422, "validation_failed"),
        ({"grant_id": "nope"}, 422, "validation_failed"),
        ({"action": "DROP TABLE"}, 422, "validation_failed"),
        ({"action": "token.%"}, 422, "validation_failed"),
        ({"since": "yesterday"}, 422, "validation_failed"),
        ({"order": "up"}, 422, "validation_failed"),
        ({"outcome": "maybe"}, 422, "validation_failed"),
        ({"client_id": "000000000000000000000000"}, 404, "not_found"),
        ({"party": "000000000000000000000000"}, 404, "not_found"),
        ({"user_id": "usr_nobody"}, 404, "not_found"),
    ],
)
async def test_audit_events_validation(client, headers, query, status, code):
    assert_error(await client.get("/admin/v1/audit-events", params=query, headers=headers), status, code)


async def test_audit_events_need_an_admin_key(client):
    assert_error(await client.get("/admin/v1/audit-events"), 401, "unauthorized")
