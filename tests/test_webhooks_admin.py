"""The webhook admin API: endpoints (secret shown once, sealed, rotatable), deliveries, and the policy option."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from broker.client import verify_webhook
from broker.crypto import envelope
from broker.crypto.keyring import KeyRing
from broker.db.models import WebhookEndpoint
from broker.webhooks import outbox, repository
from broker.webhooks import service as webhooks
from tests.admin_helpers import assert_error, audit_events, bearer, issue_key, new_urn
from tests.webhook_helpers import Receiver, delete_endpoints, wait_until, worker_running

PATH = "/admin/v1/webhook-endpoints"


@pytest.fixture
async def admin(client, runtime):
    """(client, write headers, read headers); endpoints created meanwhile are deleted afterwards."""
    _, write = await issue_key(runtime)
    _, read = await issue_key(runtime, scope="read")
    before = set(await _endpoint_ids(runtime))
    yield client, bearer(write), bearer(read)
    await delete_endpoints(runtime, [i for i in await _endpoint_ids(runtime) if i not in before])


async def _endpoint_ids(runtime):
    async with runtime.sessions() as session:
        return list((await session.execute(select(WebhookEndpoint.id))).scalars())


@pytest.fixture
async def partner(make_tenant):
    return await make_tenant("partner", kind="partner")


async def _create(admin, **body):
    client, write, _ = admin
    response = await client.post(PATH, json=body, headers=write)
    assert response.status_code == 201, response.text
    return response.json()


async def test_create_shows_the_secret_once_and_stores_it_sealed(admin, partner, runtime, sessions):
    client, _, read = admin
    created = await _create(admin, url="https://partner.example/hooks", client_id=partner.client_id)
    assert created["secret"].startswith("whsec_")
    assert created["client_id"] == partner.client_id
    assert created["audience"] is None
    assert created["events"] == sorted(["grant.shared", "grant.revoked", "party.removed", "user.removed"])
    assert created["enabled"] is True
    assert created["previous_secret_expires_at"] is None
    fetched = await client.get(f"{PATH}/{created['id']}", headers=read)
    assert fetched.status_code == 200
    assert "secret" not in fetched.json()
    listed = await client.get(PATH, params={"client_id": partner.client_id}, headers=read)
    assert [e["id"] for e in listed.json()["data"]] == [created["id"]]
    assert "secret" not in listed.json()["data"][0]
    async with sessions() as session:
        dump = "\n".join((await session.execute(text("SELECT t::text FROM webhook_endpoints t"))).scalars())
        row = await session.get(WebhookEndpoint, uuid.UUID(created["id"]))
    assert created["secret"] not in dump
    assert created["secret"].removeprefix("whsec_") not in dump
    assert row is not None
    assert row.secret_enc.startswith("v1.")
    (event,) = await audit_events(runtime, "webhook_endpoint.created", endpoint_id=created["id"])
    assert event.detail["host"] == "partner.example"
    assert created["secret"] not in str(event.detail)


async def test_an_audience_endpoint(admin, runtime):
    client, write, read = admin
    urn = new_urn()
    response = await client.post("/admin/v1/audiences", json={"urn": urn, "display_name": "Audience"}, headers=write)
    assert response.status_code == 201
    created = await _create(admin, url="https://cra.example/hooks", audience=urn, events=["grant.shared"])
    assert created["audience"] == urn
    assert created["client_id"] is None
    listed = await client.get(PATH, params={"audience": urn}, headers=read)
    assert [e["id"] for e in listed.json()["data"]] == [created["id"]]
    unknown = await client.get(PATH, params={"audience": new_urn()}, headers=read)
    assert unknown.json()["data"] == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"url": "https://x.example/h"}, "exactly one of client_id and audience"),
        ({"url": "https://x.example/h", "client_id": "PARTNER", "audience": "urn:x:y"}, "exactly one"),
        ({"url": "https://x.example/h", "client_id": "nobody-at-all"}, "client_id does not name a client"),
        ({"url": "https://x.example/h", "audience": "urn:nobody:none"}, "audience does not name"),
        ({"url": "ftp://x.example/h", "client_id": "PARTNER"}, "http:// or https://"),
        ({"url": "https:///nohost", "client_id": "PARTNER"}, "must name a host"),
        ({"url": "https://u:p@x.example/h", "client_id": "PARTNER"}, "user info"),
        ({"url": "https://x.example/h#frag", "client_id": "PARTNER"}, "fragment"),
        ({"url": "https://x.example/a b", "client_id": "PARTNER"}, "whitespace"),
        ({"url": "https://x.example/" + "a" * 2100, "client_id": "PARTNER"}, "longer than"),
        ({"url": "https://x.example:99999/h", "client_id": "PARTNER"}, "malformed"),
        ({"url": "https://x.example/h", "client_id": "PARTNER", "events": []}, "at least one event"),
        ({"url": "https://x.example/h", "client_id": "PARTNER", "events": ["grant.eaten"]}, "unknown event type"),
        ({"url": "https://x.example/h", "client_id": "PARTNER", "secret": "mine"}, "invalid body"),
        ({"url": "https://x.example/h", "client_id": "PARTNER", "enabled": "yes"}, "invalid body"),
        ({"url": "https://x.example/h\x00", "client_id": "PARTNER"}, "NUL"),
        ({"client_id": "PARTNER"}, "invalid body"),
    ],
)
async def test_create_refuses_bad_input(admin, partner, body, fragment):
    client, write, _ = admin
    body = {k: (partner.client_id if v == "PARTNER" else v) for k, v in body.items()}
    response = await client.post(PATH, json=body, headers=write)
    assert_error(response, 422, "validation_failed", fragment)


async def test_keys_are_required_and_read_keys_only_read(admin, partner):
    client, _, read = admin
    body = {"url": "https://x.example/h", "client_id": partner.client_id}
    assert_error(await client.post(PATH, json=body), 401, "unauthorized")
    assert_error(await client.post(PATH, json=body, headers=read), 403, "forbidden")
    assert (await client.get(PATH, headers=read)).status_code == 200
    assert_error(await client.get("/admin/v1/webhook-deliveries"), 401, "unauthorized")


async def test_update_delete_and_unknown_ids(admin, partner, runtime):
    client, write, read = admin
    created = await _create(admin, url="https://x.example/h", client_id=partner.client_id, description="first")
    path = f"{PATH}/{created['id']}"
    changed = await client.patch(
        path, json={"url": "https://y.example/h", "events": ["grant.revoked"], "enabled": False}, headers=write
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["url"], body["events"], body["enabled"], body["description"]) == (
        "https://y.example/h",
        ["grant.revoked"],
        False,
        "first",
    )
    cleared = await client.patch(path, json={"description": None}, headers=write)
    assert cleared.json()["description"] is None
    assert_error(await client.patch(path, json={"url": "gopher://y"}, headers=write), 422, "validation_failed")
    assert_error(await client.patch(path, json={"nope": 1}, headers=write), 422, "validation_failed")
    (event,) = await audit_events(runtime, "webhook_endpoint.updated", endpoint_id=created["id"], enabled=False)
    assert event.detail["host"] == "y.example"

    assert (await client.delete(path, headers=write)).status_code == 204
    assert_error(await client.get(path, headers=read), 404, "not_found")
    assert_error(await client.delete(path, headers=write), 404, "not_found")
    for bad in ("not-a-uuid", str(uuid.uuid4())):
        assert_error(await client.get(f"{PATH}/{bad}", headers=read), 404, "not_found")
        assert_error(await client.post(f"{PATH}/{bad}/rotate-secret", headers=write), 404, "not_found")
        assert_error(await client.get(f"/admin/v1/webhook-deliveries/{bad}", headers=read), 404, "not_found")
        assert_error(
            await client.post(f"/admin/v1/webhook-deliveries/{bad}/redeliver", headers=write), 404, "not_found"
        )


async def test_rotation_defaults_and_bounds(admin, partner):
    client, write, _ = admin
    created = await _create(admin, url="https://x.example/h", client_id=partner.client_id)
    path = f"{PATH}/{created['id']}/rotate-secret"
    rotated = await client.post(path, headers=write)  # no body: a day of overlap
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"] != created["secret"]
    assert rotated.json()["previous_secret_expires_at"] is not None
    immediate = await client.post(path, json={"overlap_seconds": 0}, headers=write)
    assert immediate.json()["previous_secret_expires_at"] is None
    assert_error(await client.post(path, json={"overlap_seconds": -1}, headers=write), 422, "validation_failed")
    assert_error(await client.post(path, json={"overlap_seconds": 10**9}, headers=write), 422, "validation_failed")


async def test_an_owner_has_at_most_ten_endpoints(admin, partner):
    client, write, _ = admin
    for i in range(webhooks.MAX_ENDPOINTS_PER_OWNER):
        await _create(admin, url=f"https://x.example/{i}", client_id=partner.client_id)
    response = await client.post(
        PATH, json={"url": "https://x.example/h", "client_id": partner.client_id}, headers=write
    )
    assert_error(response, 409, "conflict", "at most")


async def test_a_test_event_is_delivered_and_verifiable(admin, partner, runtime):
    client, write, read = admin
    receiver = Receiver().start()
    try:
        created = await _create(admin, url=receiver.url, client_id=partner.client_id, events=["grant.revoked"])
        queued = await client.post(f"{PATH}/{created['id']}/test", headers=write)
        assert queued.status_code == 202, queued.text
        assert queued.json()["event_type"] == "webhook.test"
        assert queued.json()["status"] == "pending"
        async with worker_running(runtime):
            (request,) = await wait_until(receiver.events)
        event = verify_webhook(request.body, request.headers, created["secret"])
        assert event.type == "webhook.test"
        assert event.data == {"endpoint_id": created["id"], "recipient": partner.client_id}
        delivery = await client.get(f"/admin/v1/webhook-deliveries/{queued.json()['id']}", headers=read)
        body = delivery.json()
        assert body["status"] == "delivered"
        assert body["event_id"] == event.id
        assert [a["status_code"] for a in body["attempts"]] == [204]
        assert body["payload"]["type"] == "webhook.test"
    finally:
        receiver.close()


async def test_listing_deliveries_filters_and_pages(admin, partner, runtime):
    client, write, read = admin
    created = await _create(admin, url="https://x.example/h", client_id=partner.client_id)
    ids = [(await client.post(f"{PATH}/{created['id']}/test", headers=write)).json()["id"] for _ in range(5)]
    seen: list[str] = []
    after = None
    while True:
        params = {"endpoint_id": created["id"], "limit": "2", **({"after": after} if after else {})}
        page = await client.get("/admin/v1/webhook-deliveries", params=params, headers=read)
        assert page.status_code == 200, page.text
        seen += [d["id"] for d in page.json()["data"]]
        after = page.json()["next_after"]
        if after is None:
            break
    assert seen == list(reversed(ids))  # newest first, every one once
    filtered = await client.get(
        "/admin/v1/webhook-deliveries",
        params={"endpoint_id": created["id"], "status": "delivered", "event_type": "webhook.test"},
        headers=read,
    )
    assert filtered.json()["data"] == []
    for params, fragment in (
        ({"status": "lost"}, "status must be one of"),
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"endpoint_id": "nope"}, "endpoint_id"),
        ({"after": "garbage"}, "cursor"),
    ):
        response = await client.get("/admin/v1/webhook-deliveries", params=params, headers=read)
        assert_error(response, 422, "validation_failed", fragment)


async def test_a_delivery_in_flight_cannot_be_redelivered(admin, partner, runtime):
    client, write, _ = admin
    created = await _create(admin, url="https://x.example/h", client_id=partner.client_id)
    delivery_id = (await client.post(f"{PATH}/{created['id']}/test", headers=write)).json()["id"]
    async with runtime.sessions() as session, session.begin():
        await repository.claim_due(session, limit=1000, lease=timedelta(seconds=60))
    response = await client.post(f"/admin/v1/webhook-deliveries/{delivery_id}/redeliver", headers=write)
    assert_error(response, 409, "conflict", "being attempted")


async def test_the_policy_option_is_off_by_default_and_settable(admin, make_tenant):
    client, write, read = admin
    lender = await make_tenant("lender")
    urn = new_urn()
    await client.post("/admin/v1/audiences", json={"urn": urn, "display_name": "A"}, headers=write)
    path = f"/admin/v1/tenants/{lender.client_id}/policies"
    created = await client.put(path, json={"target": urn}, headers=write)
    assert created.status_code == 201, created.text
    assert created.json()["webhook_include_refresh_token"] is False
    changed = await client.put(path, json={"target": urn, "webhook_include_refresh_token": True}, headers=write)
    assert changed.status_code == 200
    assert changed.json()["webhook_include_refresh_token"] is True
    listed = await client.get(path, headers=read)
    assert [p["webhook_include_refresh_token"] for p in listed.json()["data"]] == [True]
    assert_error(
        await client.put(path, json={"target": urn, "webhook_include_refresh_token": "yes"}, headers=write),
        422,
        "validation_failed",
    )


async def test_endpoint_secrets_follow_the_active_ring_key(runtime, partner):
    async with runtime.sessions() as session, session.begin():
        view, secret = await webhooks.create_endpoint(
            session,
            runtime.ring,
            runtime.settings,
            webhooks.EndpointSpec(url="https://x.example/h"),
            client_id=partner.client_id,
            audience=None,
            actor="test",
            request_id=None,
        )
    endpoint_id = view.endpoint.id
    original = runtime.ring.active_kid
    keys = {"next": bytes(range(32)), **runtime.ring.keys}
    rotated = KeyRing(active_kid="next", keys=keys, hash_key=runtime.ring.hash_key)
    try:
        async with runtime.sessions() as session:
            assert (await webhooks.secret_key_usage(session)).get(original, 0) >= 1
        await _reencrypt_all(runtime, rotated)
        async with runtime.sessions() as session:
            usage = await webhooks.secret_key_usage(session)
            row = await session.get(WebhookEndpoint, endpoint_id)
        assert set(usage) == {"next"}  # the old key protects no secret any more: it may be retired
        assert row is not None
        assert row.secret_enc.startswith("v1.next.")
        aad = outbox.endpoint_secret_aad(partner.tenant_id, endpoint_id)
        assert envelope.open_(rotated, row.secret_enc, aad).decode() == secret
    finally:
        # back under the test ring's key, for the endpoints other tests may still make
        await _reencrypt_all(runtime, KeyRing(active_kid=original, keys=keys, hash_key=runtime.ring.hash_key))
        await delete_endpoints(runtime, [endpoint_id])


async def _reencrypt_all(runtime, ring):
    moved = 1
    while moved:
        async with runtime.sessions() as session, session.begin():
            moved = await webhooks.reencrypt_secrets(session, ring)
