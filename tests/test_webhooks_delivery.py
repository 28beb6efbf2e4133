"""Webhook events from the outbox to a real HTTP receiver: signed, retried, dead-lettered, never doubled."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select, text, update

from broker.app import build_runtime, create_app
from broker.client import WebhookVerificationError, verify_webhook
from broker.db.models import Audience, AudiencePolicy, WebhookDelivery
from broker.webhooks import outbox, repository
from broker.webhooks.delivery import DeliveryWorker
from tests.admin_helpers import bearer, issue_key
from tests.oauth_helpers import EXCHANGE, OAUTH_USER, USER, add_member, revoke, token_ok
from tests.webhook_helpers import (
    Receiver,
    Reply,
    attempts,
    fast_config,
    open_hooks,
    wait_until,
    worker_running,
)


@pytest.fixture
async def h(client, runtime, settings, sessions, make_tenant):
    async with open_hooks(client, runtime, settings, sessions, make_tenant) as hooks:
        yield hooks


async def test_grant_shared_reaches_each_party_signed_and_verifiable(h):
    world, receiver = h.world, h.receiver
    ep_a, secret_a = await h.endpoint(receiver.url + "/a", client_id=world.partner_a.client_id)
    ep_b, secret_b = await h.endpoint(receiver.url + "/b", client_id=world.partner_b.client_id)
    await h.endpoint(receiver.url + "/outsider", client_id=world.outsider.client_id)
    await h.share(f"{world.urn_a},{world.urn_b}")

    async with worker_running(h.runtime):
        await wait_until(lambda: len(receiver.events()) >= 2)
        await asyncio.sleep(0.1)  # nothing else is on its way
    received = {r.path: r for r in receiver.events()}
    assert set(received) == {"/hooks/a", "/hooks/b"}  # the outsider is not a party

    for path, secret, partner, urn in (
        ("/hooks/a", secret_a, world.partner_a, world.urn_a),
        ("/hooks/b", secret_b, world.partner_b, world.urn_b),
    ):
        request = received[path]
        event = verify_webhook(request.body, request.headers, secret)
        assert event.type == "grant.shared"
        assert event.id.startswith("evt_")
        assert abs(event.sent_at - time.time()) < 30
        assert event.data["recipient"] == partner.client_id
        assert event.data["requester"] == world.lender.client_id
        assert event.data["via"] == urn
        assert event.data["kind"] == "multi_party"
        assert event.data["user_id"] == world.user["user_id"]
        assert event.data["audience"] == f"{world.urn_a},{world.urn_b}"
        assert "refresh_token" not in event.data  # off by default
        uuid.UUID(event.data["grant_id"])
        assert request.headers["content-type"] == "application/json"
    # the two parties' events are distinct events of the same grant
    a, b = received["/hooks/a"], received["/hooks/b"]
    assert a.event_id != b.event_id
    assert a.event["data"]["grant_id"] == b.event["data"]["grant_id"]
    with pytest.raises(WebhookVerificationError):
        verify_webhook(a.body, a.headers, secret_b)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(a.body + b" ", a.headers, secret_a)
    for endpoint_id in (ep_a, ep_b):
        (row,) = await h.rows(endpoint_id)
        assert row.status == "delivered"
        assert row.attempt_count == 1
        (attempt,) = await attempts(h.runtime, row.id)
        assert attempt.status_code == 204
        assert attempt.error is None


async def test_the_policy_option_puts_the_shared_refresh_token_in_grant_shared(h):
    world, receiver = h.world, h.receiver
    async with h.sessions() as session, session.begin():
        await session.execute(
            update(AudiencePolicy)
            .where(AudiencePolicy.tenant_id == world.lender.tenant_id)
            .where(AudiencePolicy.audience_id.in_(select(Audience.id).where(Audience.urn == world.urn_a)))
            .values(webhook_include_refresh_token=True)
        )
    ep_a, secret_a = await h.endpoint(receiver.url + "/a", client_id=world.partner_a.client_id)
    ep_b, secret_b = await h.endpoint(receiver.url + "/b", client_id=world.partner_b.client_id)
    shared = await h.share(f"{world.urn_a},{world.urn_b}")

    # sealed in the outbox, never in plaintext
    async with h.sessions() as session:
        dump = "\n".join((await session.execute(text("SELECT t::text FROM webhook_deliveries t"))).scalars())
        rows = (
            (await session.execute(select(WebhookDelivery).where(WebhookDelivery.endpoint_id.in_([ep_a, ep_b]))))
            .scalars()
            .all()
        )
    assert shared["refresh_token"] not in dump
    assert {r.endpoint_id: r.token_enc is not None for r in rows} == {ep_a: True, ep_b: False}
    assert all(r.token_enc.startswith("v2.") for r in rows if r.token_enc)  # under the lender's data key

    async with worker_running(h.runtime):
        await wait_until(lambda: len(receiver.events()) >= 2)
    received = {r.path: r for r in receiver.events()}
    event_a = verify_webhook(received["/hooks/a"].body, received["/hooks/a"].headers, secret_a)
    event_b = verify_webhook(received["/hooks/b"].body, received["/hooks/b"].headers, secret_b)
    assert event_a.data["refresh_token"] == shared["refresh_token"]
    assert event_a.data["refresh_token_expires_at"].endswith("Z")
    assert "refresh_token" not in event_b.data
    # once delivered, broker keeps no copy of the token
    assert all(row.token_enc is None for row in await h.rows(ep_a))
    # the partner uses the token it received with its own credentials
    forked = await token_ok(
        h.client, world.partner_a, grant_type="refresh_token", refresh_token=event_a.data["refresh_token"]
    )
    assert forked["refresh_token"] != shared["refresh_token"]


async def test_an_exchange_toward_another_client_notifies_that_client(h):
    world = h.world
    _, secret = await h.endpoint(h.receiver.url, client_id=world.other.client_id)
    subject = await token_ok(
        h.client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=world.user["user_id"],
        subject_token_type=USER,
        audience=world.lender.client_id,
    )
    await token_ok(
        h.client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=subject["refresh_token"],
        subject_token_type=OAUTH_USER,
        audience=world.other.client_id,
    )
    async with worker_running(h.runtime):
        (request,) = await wait_until(h.receiver.events)
    event = verify_webhook(request.body, request.headers, secret)
    assert event.type == "grant.shared"
    assert event.data["kind"] == "exchange"
    assert event.data["recipient"] == world.other.client_id
    assert event.data["via"] == world.other.client_id


async def test_nobody_listening_writes_nothing(h):
    before = await _outbox_size(h)
    await h.share(h.world.urn_a)
    assert await _outbox_size(h) == before


async def _outbox_size(h):
    async with h.sessions() as session:
        return (await session.execute(text("SELECT count(*) FROM webhook_deliveries"))).scalar_one()


async def test_an_audience_endpoint_hears_about_its_members_and_subscriptions_filter(h):
    world, receiver = h.world, h.receiver
    second = await h.make_tenant("partner a2", kind="partner")
    await add_member(h.sessions, world.urn_a, second.tenant_id)
    _, secret = await h.endpoint(receiver.url + "/aud", audience=world.urn_a, events=("grant.shared",))
    await h.endpoint(receiver.url + "/revocations", client_id=world.partner_a.client_id, events=("grant.revoked",))
    shared = await h.share(world.urn_a)
    async with worker_running(h.runtime):
        await wait_until(lambda: len(receiver.events()) >= 2)
        await asyncio.sleep(0.1)
        events = [verify_webhook(r.body, r.headers, secret) for r in receiver.events()]
        assert {e.data["recipient"] for e in events} == {world.partner_a.client_id, second.client_id}
        assert {r.path for r in receiver.events()} == {"/hooks/aud"}
        # the revocation goes to the endpoint subscribed to it, not to the audience's (shared only)
        await revoke(h.client, world.lender, shared["refresh_token"])
        await wait_until(lambda: receiver.events("grant.revoked"))
        await asyncio.sleep(0.1)
    assert [r.path for r in receiver.events("grant.revoked")] == ["/hooks/revocations"]


async def test_a_receiver_failing_n_times_gets_the_event_exactly_once_more(h):
    failures = 3
    h.receiver.respond = lambda n, _r: Reply(503, b"busy") if n < failures else Reply(200, b"ok")
    endpoint_id, secret = await h.endpoint(h.receiver.url, client_id=h.world.partner_a.client_id)
    await h.share(h.world.urn_a)

    async with worker_running(h.runtime):
        await wait_until(lambda: len(h.receiver.events()) >= failures + 1)
        (row,) = await wait_until(lambda: h.rows(endpoint_id, "delivered"), within=5)  # recorded after the 200
        await asyncio.sleep(0.3)  # several backoff periods: nothing more comes
    requests = h.receiver.events()
    assert len(requests) == failures + 1
    assert len({r.event_id for r in requests}) == 1  # a stable event id on every attempt
    assert len({r.body for r in requests}) == 1  # and the same body
    for request in requests:
        verify_webhook(request.body, request.headers, secret)
    assert row.attempt_count == failures + 1
    assert row.failures == 0
    assert row.last_status_code == 200
    kept = await attempts(h.runtime, row.id)
    assert [a.status_code for a in kept] == [503, 503, 503, 200]
    assert [a.response_body for a in kept] == ["busy", "busy", "busy", "ok"]
    assert all(a.duration_ms >= 0 for a in kept)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(requests)]
    assert all(gap >= 0.01 for gap in gaps)  # backoff spaced the attempts out


async def test_a_receiver_that_never_succeeds_is_dead_lettered_then_redelivered_on_request(h):
    h.receiver.respond = lambda _n, _r: Reply(500, b"x" * 5000)
    endpoint_id, _ = await h.endpoint(h.receiver.url, client_id=h.world.partner_a.client_id)
    await h.share(h.world.urn_a)
    config = fast_config(max_attempts=3)
    async with worker_running(h.runtime, config):
        (row,) = await wait_until(lambda: h.rows(endpoint_id, "dead"))
        await asyncio.sleep(0.2)
    assert len(h.receiver.events()) == 3
    assert row.failures == 3
    assert row.last_status_code == 500
    kept = await attempts(h.runtime, row.id)
    assert len(kept) == 3
    assert all(len(a.response_body or "") == 2048 for a in kept)  # truncated

    # the operator redelivers (admin API), the receiver has recovered
    h.receiver.respond = lambda _n, _r: Reply(200)
    _, key = await issue_key(h.runtime)
    listed = await h.client.get(
        "/admin/v1/webhook-deliveries", params={"status": "dead", "endpoint_id": str(endpoint_id)}, headers=bearer(key)
    )
    assert listed.status_code == 200, listed.text
    assert [d["id"] for d in listed.json()["data"]] == [str(row.id)]
    response = await h.client.post(f"/admin/v1/webhook-deliveries/{row.id}/redeliver", headers=bearer(key))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "pending"
    async with worker_running(h.runtime, config):
        (done,) = await wait_until(lambda: h.rows(endpoint_id, "delivered"))
    assert done.event_id == row.event_id
    assert len(h.receiver.events()) == 4
    assert h.receiver.events()[-1].event_id == row.event_id


async def test_redeliver_all_dead_lettered(h):
    h.receiver.respond = lambda _n, _r: Reply(400)
    endpoint_id, _ = await h.endpoint(h.receiver.url, client_id=h.world.partner_a.client_id)
    for _ in range(3):
        await h.share(h.world.urn_a)
    async with worker_running(h.runtime, fast_config(max_attempts=1)):
        await wait_until(lambda: h.rows(endpoint_id, "dead"))
    h.receiver.respond = lambda _n, _r: Reply(200)
    _, key = await issue_key(h.runtime)
    response = await h.client.post(
        "/admin/v1/webhook-deliveries/redeliver-dead", json={"endpoint_id": str(endpoint_id)}, headers=bearer(key)
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"redelivered": 3}
    async with worker_running(h.runtime):
        rows = await wait_until(lambda: h.rows(endpoint_id, "delivered"))
    assert len(rows) == 3


async def test_two_workers_with_their_own_engines_never_post_one_delivery_at_once(h):
    h.receiver.respond = lambda _n, _r: Reply(200, delay=0.1)  # slow enough for the workers to overlap
    endpoint_id, _ = await h.endpoint(h.receiver.url, client_id=h.world.partner_a.client_id)
    total = 40
    for _ in range(total):
        await h.share(h.world.urn_a)
    first, second = build_runtime(h.settings), build_runtime(h.settings)
    try:
        for warm in (first, second):  # connect both before either starts, so both get a share
            async with warm.sessions() as session:
                await session.execute(text("SELECT 1"))
        config = fast_config(concurrency=5)
        async with worker_running(first, config) as one, worker_running(second, config) as two:
            await wait_until(lambda: len(h.receiver.events()) >= total, within=20)
            rows = await wait_until(lambda: h.rows(endpoint_id, "delivered"))
            await asyncio.sleep(0.2)
        assert one.delivered > 0
        assert two.delivered > 0  # both took a share
    finally:
        await first.close()
        await second.close()
    assert len(rows) == total
    assert len(h.receiver.events()) == total  # each delivered exactly once
    assert len({r.event_id for r in h.receiver.events()}) == total
    assert h.receiver.max_in_flight_per_id == 1
    assert all(r.attempt_count == 1 for r in rows)


async def test_a_claimed_delivery_is_never_claimed_twice_until_its_lease_expires(h):
    endpoint_id, _ = await h.endpoint("http://127.0.0.1:9/unused", client_id=h.world.partner_a.client_id)
    await h.share(h.world.urn_a)

    async def claim(lease: float):
        async with h.runtime.sessions() as session, session.begin():
            jobs = await repository.claim_due(session, limit=1000, lease=timedelta(seconds=lease))
        return [j for j in jobs if j.endpoint_id == endpoint_id]

    first = await claim(0.5)
    assert len(first) == 1
    assert await claim(0.5) == []  # leased
    await asyncio.sleep(0.6)
    again = await claim(60)
    assert len(again) == 1  # the lease expired (the first claimer "died")
    assert again[0].id == first[0].id
    assert again[0].claim_id != first[0].claim_id
    # the late first claimer cannot overwrite the new claim's outcome (its attempt is still kept)
    late = repository.Recorded(
        delivery_id=first[0].id,
        claim_id=first[0].claim_id,
        attempted_at=datetime.now(UTC),
        duration_ms=5,
        status_code=200,
        response_body="ok",
        error=None,
        status="delivered",
        failures=0,
        retry_in=None,
    )
    async with h.runtime.sessions() as session, session.begin():
        released = await repository.record(session, [late])
    assert released == set()
    assert [a.status_code for a in await attempts(h.runtime, first[0].id)] == [200]
    (row,) = await h.rows(endpoint_id)
    assert row.status == "pending"
    assert row.attempt_count == 2


async def test_a_worker_killed_mid_delivery_loses_nothing(h):
    """``broker worker`` claims the event and dies mid-post; the next worker delivers it after the lease."""
    h.receiver.respond = lambda n, _r: Reply(200, delay=30) if n == 0 else Reply(200)
    endpoint_id, secret = await h.endpoint(h.receiver.url, client_id=h.world.partner_a.client_id)
    await h.share(h.world.urn_a)
    env = {
        **os.environ,
        "BROKER_WEBHOOK_TIMEOUT_SECONDS": "1",
        "BROKER_WEBHOOK_LEASE_SECONDS": "2",
        "BROKER_WEBHOOK_POLL_SECONDS": "0.05",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker",
        "worker",
        "--no-migrate",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_until(h.receiver.events, within=30)  # the post is in flight, the receiver stalls
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    (claimed,) = await h.rows(endpoint_id)
    assert claimed.status == "pending"
    assert claimed.locked_until is not None  # leased by the dead worker

    started = time.monotonic()
    async with worker_running(h.runtime, fast_config(lease=2.0, timeout=1.0)):
        (row,) = await wait_until(lambda: h.rows(endpoint_id, "delivered"), within=15)
    assert time.monotonic() - started >= 0.5  # it waited for the lease (2 s from the dead claim)
    assert row.attempt_count == 2
    first, second = h.receiver.events()
    assert first.event_id == second.event_id == row.event_id
    verify_webhook(second.body, second.headers, secret)


async def test_redirects_are_not_followed_and_slow_receivers_time_out(h):
    target = Receiver().start()
    try:
        h.receiver.respond = lambda _n, r: (
            Reply(302, headers={"location": target.url}) if r.path == "/hooks/redirect" else Reply(200, delay=2)
        )
        redirect_id, _ = await h.endpoint(h.receiver.url + "/redirect", client_id=h.world.partner_a.client_id)
        slow_id, _ = await h.endpoint(h.receiver.url + "/slow", client_id=h.world.partner_a.client_id)
        await h.share(h.world.urn_a)
        async with worker_running(h.runtime, fast_config(max_attempts=1, timeout=0.5, lease=2.0)):
            await wait_until(lambda: h.rows(redirect_id, "dead"))
            (slow,) = await wait_until(lambda: h.rows(slow_id, "dead"), within=10)
        assert target.events() == []
        (redirected,) = await h.rows(redirect_id)
        assert redirected.last_status_code == 302
        assert slow.last_status_code is None
        assert "timeout" in (slow.last_error or "")
    finally:
        target.close()


async def test_a_disabled_endpoint_waits_and_resumes(h):
    endpoint_id, _ = await h.endpoint(h.receiver.url, client_id=h.world.partner_a.client_id)
    await h.share(h.world.urn_a)
    _, key = await issue_key(h.runtime)
    path = f"/admin/v1/webhook-endpoints/{endpoint_id}"
    off = await h.client.patch(path, json={"enabled": False}, headers=bearer(key))
    assert off.status_code == 200, off.text
    await h.share(h.world.urn_a)  # not queued for a disabled endpoint
    async with worker_running(h.runtime):
        await asyncio.sleep(0.3)
        assert h.receiver.events() == []
        on = await h.client.patch(path, json={"enabled": True}, headers=bearer(key))
        assert on.status_code == 200
        await wait_until(lambda: h.rows(endpoint_id, "delivered"))
    assert len(h.receiver.events()) == 1


async def test_rotation_signs_with_both_secrets_during_the_overlap(h):
    endpoint_id, old = await h.endpoint(h.receiver.url, client_id=h.world.partner_a.client_id)
    _, key = await issue_key(h.runtime)
    path = f"/admin/v1/webhook-endpoints/{endpoint_id}/rotate-secret"
    rotated = await h.client.post(path, json={"overlap_seconds": 3600}, headers=bearer(key))
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new.startswith("whsec_")
    assert new != old
    await h.share(h.world.urn_a)
    async with worker_running(h.runtime):
        (request,) = await wait_until(h.receiver.events)
    assert len(request.headers["webhook-signature"].split()) == 2
    verify_webhook(request.body, request.headers, old)
    verify_webhook(request.body, request.headers, new)

    ended = await h.client.post(path, json={"overlap_seconds": 0}, headers=bearer(key))
    newest = ended.json()["secret"]
    await h.share(h.world.urn_a)
    async with worker_running(h.runtime):
        await wait_until(lambda: len(h.receiver.events()) == 2)
    latest = h.receiver.events()[-1]
    assert len(latest.headers["webhook-signature"].split()) == 1
    verify_webhook(latest.body, latest.headers, newest)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(latest.body, latest.headers, new)


async def test_the_app_runs_a_worker_in_its_lifespan(h):
    await h.endpoint(h.receiver.url, client_id=h.world.partner_a.client_id)
    app = create_app(h.settings.model_copy(update={"webhook_worker": True, "webhook_poll_seconds": 0.05}))
    async with AsyncTestClient(app=app, base_url="http://broker.test") as served:
        await h.share(h.world.urn_a, client=served)
        await wait_until(h.receiver.events)
    assert len(h.receiver.events()) == 1


async def test_delivered_events_are_pruned_after_the_retention(h):
    endpoint_id, _ = await h.endpoint(h.receiver.url, client_id=h.world.partner_a.client_id)
    for _ in range(3):
        await h.share(h.world.urn_a)
    async with worker_running(h.runtime):
        await wait_until(lambda: h.rows(endpoint_id, "delivered"))
    await h.share(h.world.urn_a)  # one more, still pending
    rows = await h.rows(endpoint_id)
    old_delivered, recent_delivered = rows[0].id, rows[1].id
    async with h.sessions() as session, session.begin():
        await session.execute(
            text("UPDATE webhook_deliveries SET created_at = now() - interval '40 days' WHERE id = ANY(:ids)"),
            {"ids": [old_delivered, rows[3].id]},
        )
    worker = DeliveryWorker(h.runtime, fast_config(retention_days=30))
    assert await worker.prune() == 1
    remaining = {r.id for r in await h.rows(endpoint_id)}
    assert old_delivered not in remaining
    assert {recent_delivered, rows[3].id} <= remaining  # recent, and old but not delivered, are kept
    assert await DeliveryWorker(h.runtime, fast_config(retention_days=0)).prune() == 0


def test_outbox_event_types():
    assert set(outbox.EVENT_TYPES) == {"grant.shared", "grant.revoked", "party.removed", "user.removed"}


async def test_a_worker_without_a_database_keeps_running(settings):
    broken = build_runtime(settings.model_copy(update={"database_url": "postgresql://nobody@127.0.0.1:1/none"}))
    try:
        worker = DeliveryWorker(broken, fast_config(poll=0.5))
        assert await worker.run_once() == 0
        assert await worker.run_once() == 0
        assert worker._claim_failures == 2  # it backs off (0.5 s * 2**n, at most 30 s) instead of spinning
        assert worker._claim_pause_until > time.monotonic() + 1
    finally:
        await broken.close()
