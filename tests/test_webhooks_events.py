"""Which events a change writes to the outbox, and for whom: cascades, withdrawals, replays, user removal."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select, text

from broker.db.models import Grant, WebhookDelivery
from tests.oauth_helpers import EXCHANGE, OAUTH_USER, USER, add_member, revoke, token_ok
from tests.webhook_helpers import open_hooks, wait_until, worker_running

REVOKED = ("grant.revoked",)
EVERYTHING = ("grant.shared", "grant.revoked", "party.removed", "user.removed")


@pytest.fixture
async def h(client, runtime, settings, sessions, make_tenant):
    async with open_hooks(client, runtime, settings, sessions, make_tenant) as hooks:
        yield hooks


async def _listen(h, events, **parties):
    """An endpoint per named client, all at the receiver; returns {name: endpoint id}."""
    endpoints = {}
    for name, creds in parties.items():
        endpoints[name], _ = await h.endpoint(f"{h.receiver.url}/{name}", client_id=creds.client_id, events=events)
    return endpoints


async def _outbox(h, endpoints, event_type):
    """{name: [payload data, ...]} of the outbox rows of ``event_type`` per endpoint."""
    names = {endpoint_id: name for name, endpoint_id in endpoints.items()}
    async with h.sessions() as session:
        rows = (
            (
                await session.execute(
                    select(WebhookDelivery)
                    .where(WebhookDelivery.endpoint_id.in_(list(names)), WebhookDelivery.event_type == event_type)
                    .order_by(WebhookDelivery.created_at)
                )
            )
            .scalars()
            .all()
        )
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in endpoints}
    for row in rows:
        found[names[row.endpoint_id]].append(row.payload["data"])
    return found


async def _grants(h, **where):
    async with h.sessions() as session:
        query = select(Grant.id, Grant.kind, Grant.parent_id).filter_by(**where)
        return (await session.execute(query)).all()


async def _user_pair(h):
    return await token_ok(
        h.client,
        h.world.lender,
        grant_type=EXCHANGE,
        subject_token=h.world.user["user_id"],
        subject_token_type=USER,
        audience=h.world.lender.client_id,
    )


async def test_a_revoked_shared_grant_sends_one_grant_revoked_per_affected_party(h):
    world = h.world
    silent = await h.make_tenant("partner c", kind="partner")  # a party that never used the token
    await add_member(h.sessions, world.urn_b, silent.tenant_id)
    endpoints = await _listen(
        h,
        REVOKED,
        lender=world.lender,
        a=world.partner_a,
        b=world.partner_b,
        c=silent,
        other=world.other,
        outsider=world.outsider,
    )
    shared = await h.share(f"{world.urn_a},{world.urn_b}")
    fork_a = await token_ok(
        h.client, world.partner_a, grant_type="refresh_token", refresh_token=shared["refresh_token"]
    )
    await token_ok(h.client, world.partner_a, grant_type="refresh_token", refresh_token=fork_a["refresh_token"])
    await token_ok(h.client, world.partner_b, grant_type="refresh_token", refresh_token=shared["refresh_token"])

    await revoke(h.client, world.lender, shared["refresh_token"])

    (multi,) = await _grants(h, tenant_id=world.lender.tenant_id, kind="multi_party")
    lineages = await _grants(h, parent_id=multi.id)
    expected = {str(multi.id), *(str(g.id) for g in lineages)}
    assert len(expected) == 3
    events = await _outbox(h, endpoints, "grant.revoked")
    assert {name: len(found) for name, found in events.items()} == {
        "lender": 0,  # not a holder or party of the shared grant
        "a": 1,
        "b": 1,
        "c": 1,
        "other": 0,
        "outsider": 0,
    }
    for name in ("a", "b", "c"):
        (data,) = events[name]
        assert set(data["revoked_grants"]) == expected  # every grant the cascade revoked
        assert data["grant_id"] == str(multi.id)
        assert data["reason"] == "token.revoked"

    # and through the receiver: one signed delivery per party
    async with worker_running(h.runtime):
        await wait_until(lambda: len(h.receiver.events()) >= 3)
        await asyncio.sleep(0.1)
    assert sorted(r.path for r in h.receiver.events()) == ["/hooks/a", "/hooks/b", "/hooks/c"]


async def test_revoking_a_lineage_notifies_each_holder_down_the_cascade(h):
    world = h.world
    endpoints = await _listen(h, REVOKED, lender=world.lender, other=world.other, a=world.partner_a)
    root = await _user_pair(h)
    child = await token_ok(
        h.client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=root["refresh_token"],
        subject_token_type=OAUTH_USER,
        audience=world.other.client_id,
    )
    await token_ok(h.client, world.other, grant_type="refresh_token", refresh_token=child["refresh_token"])
    await revoke(h.client, world.lender, root["refresh_token"])

    events = await _outbox(h, endpoints, "grant.revoked")
    assert {name: len(found) for name, found in events.items()} == {"lender": 1, "other": 1, "a": 0}
    assert events["lender"][0]["revoked_grants"] == events["other"][0]["revoked_grants"]
    assert len(events["lender"][0]["revoked_grants"]) == 2
    # revoking again revokes nothing new and says nothing
    await revoke(h.client, world.lender, root["refresh_token"])
    assert {n: len(f) for n, f in (await _outbox(h, endpoints, "grant.revoked")).items()} == {
        "lender": 1,
        "other": 1,
        "a": 0,
    }


async def test_a_party_withdrawing_sends_party_removed_to_it_and_the_lender(h):
    world = h.world
    endpoints = await _listen(h, EVERYTHING, lender=world.lender, a=world.partner_a, b=world.partner_b)
    shared = await h.share(f"{world.urn_a},{world.urn_b}")
    fork = await token_ok(h.client, world.partner_a, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    await revoke(h.client, world.partner_a, shared["refresh_token"])  # withdraws partner a's share only

    removed = await _outbox(h, endpoints, "party.removed")
    assert {name: len(found) for name, found in removed.items()} == {"lender": 1, "a": 1, "b": 0}
    data = removed["a"][0]
    assert data["party"] == world.partner_a.client_id
    assert data["reason"] == "withdrawn"
    assert len(data["revoked_grants"]) == 1  # its own lineage
    revoked = await _outbox(h, endpoints, "grant.revoked")
    assert {name: len(found) for name, found in revoked.items()} == {"lender": 0, "a": 1, "b": 0}
    assert revoked["a"][0]["reason"] == "party.withdrawn"
    # partner b keeps its share; a second withdrawal says nothing more
    await token_ok(h.client, world.partner_b, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    await revoke(h.client, world.partner_a, shared["refresh_token"])
    assert len((await _outbox(h, endpoints, "party.removed"))["a"]) == 1
    refused = await h.client.post(
        "/oauth/token",
        json={"grant_type": "refresh_token", "refresh_token": fork["refresh_token"]},
        headers=world.partner_a.headers,
    )
    assert refused.status_code == 400


async def test_removing_a_user_tells_every_client_that_held_or_shared_its_grants(h):
    world = h.world
    endpoints = await _listen(
        h, EVERYTHING, lender=world.lender, a=world.partner_a, b=world.partner_b, other=world.other, x=world.outsider
    )
    root = await _user_pair(h)
    await token_ok(
        h.client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=root["refresh_token"],
        subject_token_type=OAUTH_USER,
        audience=world.other.client_id,
    )
    await h.share(f"{world.urn_a},{world.urn_b}")
    response = await h.client.post(
        "/user/remove", json={"user_id": world.user["user_id"]}, headers=world.lender.headers
    )
    assert response.status_code == 200, response.text

    removed = await _outbox(h, endpoints, "user.removed")
    assert {name: len(found) for name, found in removed.items()} == {"lender": 1, "a": 1, "b": 1, "other": 1, "x": 0}
    assert {d["user_id"] for found in removed.values() for d in found} == {world.user["user_id"]}
    revoked = await _outbox(h, endpoints, "grant.revoked")
    assert {name: len(found) for name, found in revoked.items()} == {"lender": 1, "a": 1, "b": 1, "other": 1, "x": 0}
    assert {d["reason"] for found in revoked.values() for d in found} == {"user.removed"}
    assert len(revoked["a"][0]["revoked_grants"]) == 3  # the user grant, the exchange, the shared grant


async def test_a_replayed_refresh_token_reports_the_family_revoked(h):
    world = h.world
    endpoints = await _listen(h, REVOKED, lender=world.lender)
    first = await _user_pair(h)
    second = await token_ok(h.client, world.lender, grant_type="refresh_token", refresh_token=first["refresh_token"])
    await token_ok(h.client, world.lender, grant_type="refresh_token", refresh_token=second["refresh_token"])
    replay = await h.client.post(
        "/oauth/token",
        json={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        headers=world.lender.headers,
    )
    assert replay.json()["error"] == "invalid_grant"
    (data,) = (await _outbox(h, endpoints, "grant.revoked"))["lender"]
    assert data["reason"] == "refresh_token.replayed"


async def test_a_refused_change_writes_no_event(h):
    world = h.world
    endpoints = await _listen(h, EVERYTHING, a=world.partner_a, outsider=world.outsider)
    refused = await h.client.post(
        "/oauth/token",
        json={
            "grant_type": EXCHANGE,
            "subject_token": world.user["user_id"],
            "subject_token_type": "urn:plaid:params:credit:multi-user",
            "audience": f"{world.urn_a},{world.outsider.client_id}",  # no policy toward the outsider
        },
        headers=world.lender.headers,
    )
    assert refused.json()["error"] == "invalid_target"
    shared = await h.share(world.urn_a)
    await revoke(h.client, world.outsider, shared["refresh_token"])  # not the outsider's to revoke
    for event_type in EVERYTHING:
        counts = {n: len(f) for n, f in (await _outbox(h, endpoints, event_type)).items()}
        assert counts == {"a": 1 if event_type == "grant.shared" else 0, "outsider": 0}


async def test_events_carry_no_secret_in_the_outbox(h):
    world = h.world
    await _listen(h, EVERYTHING, lender=world.lender, a=world.partner_a, other=world.other)
    root = await _user_pair(h)
    shared = await h.share(world.urn_a)
    fork = await token_ok(h.client, world.partner_a, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    await revoke(h.client, world.lender, root["refresh_token"])
    await revoke(h.client, world.partner_a, shared["refresh_token"])
    async with h.sessions() as session:
        dump = "\n".join((await session.execute(text("SELECT t::text FROM webhook_deliveries t"))).scalars())
    for secret in (root, shared, fork):
        assert secret["access_token"] not in dump
        assert secret["refresh_token"] not in dump
    async with worker_running(h.runtime):
        await wait_until(lambda: len(h.receiver.events()) >= 3)
    for request in h.receiver.events():
        assert b"pdr-" not in request.body
        assert b"pda-" not in request.body
        assert request.event["type"] in EVERYTHING
    assert all(set(r.event) == {"type", "timestamp", "data"} for r in h.receiver.events())
