"""Tenant data keys: v2 envelopes, the per-process cache, and crypto-shredding one tenant."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import delete, select

from broker.app import build_runtime
from broker.crypto import envelope
from broker.db.models import AuditEvent, RefreshToken, TenantKey, User
from broker.keys import sealing
from broker.keys import service as keys
from broker.users import service as users
from tests.admin_helpers import assert_error, bearer, issue_key
from tests.oauth_helpers import EXCHANGE, MULTI, build_world, introspect, post_token, token_ok


@pytest.fixture(scope="module")
async def headers(runtime):
    _, key = await issue_key(runtime, "write")
    return bearer(key)


async def _refresh(client, creds, refresh_token):
    return await post_token(client, creds, grant_type="refresh_token", refresh_token=refresh_token)


async def _live_key(sessions, tenant_id):
    async with sessions() as session:
        return await session.scalar(
            select(TenantKey.id).where(TenantKey.tenant_id == tenant_id, TenantKey.shredded_at.is_(None))
        )


async def _token_rows(sessions, tenant_id):
    async with sessions() as session:
        return (await session.execute(select(RefreshToken).where(RefreshToken.tenant_id == tenant_id))).scalars().all()


async def test_a_tenant_gets_its_data_key_at_creation_and_seals_under_it(client, make_tenant, sessions, runtime):
    lender = await make_tenant("dek lender")
    dek_id = await _live_key(sessions, lender.tenant_id)
    assert dek_id is not None
    async with sessions() as session:
        wrapped = await session.scalar(select(TenantKey.wrapped).where(TenantKey.id == dek_id))
    assert wrapped.startswith(f"v1.{runtime.ring.active_kid}.")  # wrapped by the ring's active key
    body = await token_ok(client, lender, grant_type="client_credentials")
    (row,) = await _token_rows(sessions, lender.tenant_id)
    assert row.token_enc.startswith(f"v2.{dek_id}.")
    async with sessions() as session:
        aad = envelope.aad_for("refresh_tokens", "token", lender.tenant_id, row.id)
        assert (await sealing.open_(session, runtime.ring, row.token_enc, aad)).decode() == body["refresh_token"]


async def test_a_tenant_without_a_data_key_gets_one_on_first_use(client, make_tenant, sessions):
    lender = await make_tenant("legacy lender")
    async with sessions() as session, session.begin():
        await session.execute(delete(TenantKey).where(TenantKey.tenant_id == lender.tenant_id))
    first = await token_ok(client, lender, grant_type="client_credentials")
    dek_id = await _live_key(sessions, lender.tenant_id)
    assert dek_id is not None
    assert (await _refresh(client, lender, first["refresh_token"])).status_code == 200
    assert {r.token_enc.split(".")[1] for r in await _token_rows(sessions, lender.tenant_id)} == {str(dek_id)}


async def test_a_key_created_in_a_rolled_back_transaction_is_never_cached(make_tenant, sessions, settings):
    lender = await make_tenant("rollback lender")
    async with sessions() as session, session.begin():
        await session.execute(delete(TenantKey).where(TenantKey.tenant_id == lender.tenant_id))
    replica = build_runtime(settings)
    try:
        async with replica.sessions() as session:
            await session.begin()
            created = await sealing.current_data_key(session, replica.ring, lender.tenant_id)
            assert replica.ring.data_keys.current(lender.tenant_id) is None  # uncommitted: not cached
            await session.rollback()
        async with replica.sessions() as session, session.begin():
            committed = await sealing.current_data_key(session, replica.ring, lender.tenant_id)
        assert committed.id != created.id
        assert replica.ring.data_keys.current(lender.tenant_id) is None  # created by that transaction
        async with replica.sessions() as session, session.begin():
            assert await sealing.current_data_key(session, replica.ring, lender.tenant_id) == committed
        assert replica.ring.data_keys.current(lender.tenant_id) == committed  # read once committed: cached
    finally:
        await replica.close()


async def test_the_cache_serves_seals_without_a_query_and_expires(make_tenant, settings):
    lender = await make_tenant("cache lender")
    replica = build_runtime(settings)
    replica.ring.data_keys.ttl = 0.3
    try:
        async with replica.sessions() as session, session.begin():
            first = await sealing.current_data_key(session, replica.ring, lender.tenant_id)
        assert replica.ring.data_keys.current(lender.tenant_id) == first
        await asyncio.sleep(0.35)
        assert replica.ring.data_keys.current(lender.tenant_id) is None
        assert replica.ring.data_keys.get(first.id) is None
    finally:
        await replica.close()


async def test_shredding_one_tenant_makes_its_tokens_and_users_unusable_and_leaves_others(  # noqa: PLR0917
    client, make_tenant, sessions, runtime, settings, headers
):
    world = await build_world(client, sessions, make_tenant)
    other = await make_tenant("unshredded lender")
    own = await token_ok(client, world.lender, grant_type="client_credentials")
    identity = {"identity": {"name": {"given_name": "Ada", "family_name": "Lovelace"}}}
    updated = await client.post(
        "/user/update", json={"user_id": world.user["user_id"], **identity}, headers=world.lender.headers
    )
    assert updated.status_code == 200, updated.text
    shared = await token_ok(
        client,
        world.lender,
        grant_type=EXCHANGE,
        subject_token=world.user["user_id"],
        subject_token_type=MULTI,
        audience=f"{world.urn_a},{world.urn_b}",
    )
    forked = await token_ok(client, world.partner_a, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    kept = await token_ok(client, other, grant_type="client_credentials")
    other_user = (await client.post("/user/create", json={"client_user_id": "keep-me"}, headers=other.headers)).json()

    # another replica has the lender's data key cached
    replica = build_runtime(settings)
    async with replica.sessions() as session, session.begin():
        cached = await sealing.current_data_key(session, replica.ring, world.lender.tenant_id)

    refused = await client.post(
        f"/admin/v1/tenants/{world.lender.client_id}/shred", json={"confirm": "nope"}, headers=headers
    )
    assert_error(refused, 422, "validation_failed", "confirm")
    response = await client.post(
        f"/admin/v1/tenants/{world.lender.client_id}/shred",
        json={"confirm": world.lender.client_id},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["data_keys"] == [str(cached.id)]
    assert result["grants_revoked"] >= 3
    assert result["users_removed"] == 1

    # every token of the lender's data is refused cleanly, whoever holds it
    for creds, token in ((world.lender, own), (world.partner_a, forked), (world.partner_b, shared)):
        refreshed = await _refresh(client, creds, token["refresh_token"])
        assert refreshed.status_code == 400, refreshed.text
        assert refreshed.json()["error"] == "invalid_grant"
        assert (await introspect(client, creds, token["access_token"]))["active"] is False
    gone = await client.post("/user/get", json={"user_id": world.user["user_id"]}, headers=world.lender.headers)
    assert gone.status_code == 400
    assert gone.json()["error_code"] == "USER_NOT_FOUND"

    # and unrecoverable: the data key is destroyed, so no replica can open the ciphertexts
    async with sessions() as session:
        key_row = (await session.execute(select(TenantKey).where(TenantKey.id == cached.id))).scalar_one()
        user = (await session.execute(select(User).where(User.user_id == world.user["user_id"]))).scalar_one()
    assert key_row.wrapped is None
    assert key_row.shredded_at is not None
    assert user.identity_enc is None
    fresh = build_runtime(settings)
    try:
        async with fresh.sessions() as session:
            aad = envelope.aad_for("users", "user_token", world.lender.tenant_id, user.id)
            with pytest.raises(envelope.EnvelopeError):
                await sealing.open_(session, fresh.ring, user.user_token_enc, aad)
            for row in await _token_rows(sessions, world.lender.tenant_id):
                row_aad = envelope.aad_for("refresh_tokens", "token", world.lender.tenant_id, row.id)
                with pytest.raises(envelope.EnvelopeError):
                    await sealing.open_(session, fresh.ring, row.token_enc, row_aad)
                assert row.retry_pair_enc is None
    finally:
        await fresh.close()

    # a replica that still has the shredded key cached (for up to BROKER_DATA_KEY_CACHE_SECONDS) may seal a
    # new user under it; readers then find that user's data gone, never a 500
    async with replica.sessions() as session:
        stale = await users.create_user(
            session,
            replica.ring,
            tenant_id=world.lender.tenant_id,
            client_user_id="sealed-by-a-stale-replica",
            token_env="sandbox",
            identity=identity["identity"],
            actor="test",
            request_id=None,
        )
    got_stale = await client.post("/user/get", json={"user_id": stale.user_id}, headers=world.lender.headers)
    assert got_stale.json()["error_code"] == "USER_NOT_FOUND", got_stale.text
    again_stale = await client.post(
        "/user/create", json={"client_user_id": "sealed-by-a-stale-replica"}, headers=world.lender.headers
    )
    assert again_stale.status_code == 200, again_stale.text
    assert again_stale.json()["user_id"] != stale.user_id

    # a replica whose cache entry expires stops using the shredded key: it seals under a new one
    replica.ring.data_keys.ttl = 0
    replica.ring.data_keys.clear()
    async with replica.sessions() as session, session.begin():
        renewed = await sealing.current_data_key(session, replica.ring, world.lender.tenant_id)
    assert renewed.id != cached.id
    await replica.close()

    # the other tenant is untouched; the shredded one carries on with a new data key
    assert (await _refresh(client, other, kept["refresh_token"])).status_code == 200
    got = await client.post("/user/get", json={"user_id": other_user["user_id"]}, headers=other.headers)
    assert got.status_code == 200, got.text
    again = await token_ok(client, world.lender, grant_type="client_credentials")
    assert (await _refresh(client, world.lender, again["refresh_token"])).status_code == 200
    recreated = await client.post(
        "/user/create", json={"client_user_id": user.client_user_id}, headers=world.lender.headers
    )
    assert recreated.status_code == 200, recreated.text
    assert recreated.json()["user_id"] != world.user["user_id"]  # the shredded user is gone for good

    async with sessions() as session:
        status = await keys.status(session, runtime.ring)
        audited = await session.scalar(
            select(AuditEvent.detail).where(
                AuditEvent.action == "tenant.shredded", AuditEvent.tenant_id == world.lender.tenant_id
            )
        )
    assert status.data_keys.get("shredded", 0) >= 1
    assert status.columns["refresh_tokens.token_enc"].via_data_keys.get("shredded", 0) >= 3
    assert audited["data_keys"] == [str(cached.id)]


async def test_shred_from_the_cli(make_tenant, client, sessions):
    lender = await make_tenant("cli shred")
    body = await token_ok(client, lender, grant_type="client_credentials")
    result = subprocess.run(  # noqa: ASYNC221 - the CLI as an operator runs it
        [sys.executable, "-m", "broker", "keys", "shred", lender.client_id, "--yes", "--json"],
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["grants_revoked"] == 1
    assert (await _refresh(client, lender, body["refresh_token"])).json()["error"] == "invalid_grant"
    unknown = subprocess.run(  # noqa: ASYNC221
        [sys.executable, "-m", "broker", "keys", "shred", "000000000000000000000000", "--yes"],
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unknown.returncode == 1
    assert "no tenant with that client_id" in unknown.stderr


async def test_shredding_an_unknown_tenant_is_404(client, headers):
    response = await client.post(
        "/admin/v1/tenants/000000000000000000000000/shred",
        json={"confirm": "000000000000000000000000"},
        headers=headers,
    )
    assert_error(response, 404, "not_found")
