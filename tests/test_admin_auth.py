"""Admin API authentication (keys, scopes, revocation, last-use throttling) and the admin-keys endpoints."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from broker import errors
from broker.admin_keys import service as admin_keys
from broker.db.models import AdminKey
from tests.admin_helpers import assert_error, audit_events, bearer, issue_key


@pytest.fixture(scope="module")
async def write_key(runtime):
    return await issue_key(runtime, "write")


@pytest.fixture(scope="module")
async def read_key(runtime):
    return await issue_key(runtime, "read")


async def _key_row(runtime, name: str) -> AdminKey:
    async with runtime.sessions() as session:
        keys = await admin_keys.list_keys(session)
    (row,) = [k for k in keys if k.name == name and k.revoked_at is None]
    return row


# --- authentication -----------------------------------------------------------------------------------


async def test_missing_key_is_401(client):
    response = await client.get("/admin/v1/tenants")
    assert_error(response, 401, "unauthorized", "admin API key required")


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer bka-not-a-real-key-at-all-000000000000",
        "Bearer pda-RDdg0TUCB0FB25_UPIlnhA==",
        "Bearer bka-" + "x" * 300,
        "Bearer bka-\u00e9\u00e9\u00e9".encode("latin-1"),
        "bka-without-scheme",
        "Basic " + base64.b64encode(b"admin:secret").decode(),
        "Bearer ",
    ],
)
async def test_bad_keys_are_401(client, authorization):
    response = await client.get("/admin/v1/tenants", headers={"Authorization": authorization})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"


async def test_write_key_reads_and_writes(client, write_key):
    _, key = write_key
    assert (await client.get("/admin/v1/tenants", headers=bearer(key))).status_code == 200
    response = await client.post("/admin/v1/tenants", json={"name": "by write key"}, headers=bearer(key))
    assert response.status_code == 201, response.text


async def test_read_key_reads_but_cannot_write(client, read_key, write_key):
    _, key = read_key
    assert (await client.get("/admin/v1/tenants", headers=bearer(key))).status_code == 200
    assert (await client.get("/admin/v1/audiences", headers=bearer(key))).status_code == 200
    assert (await client.get("/admin/v1/admin-keys", headers=bearer(key))).status_code == 200
    response = await client.post("/admin/v1/tenants", json={"name": "by read key"}, headers=bearer(key))
    assert_error(response, 403, "forbidden", "read-only")
    created = await client.post("/admin/v1/tenants", json={"name": "target"}, headers=bearer(write_key[1]))
    client_id = created.json()["client_id"]
    for method, path, body in [
        ("PATCH", f"/admin/v1/tenants/{client_id}", {"name": "renamed"}),
        ("POST", f"/admin/v1/tenants/{client_id}/disable", None),
        ("PUT", f"/admin/v1/tenants/{client_id}/policies", {"target": "urn:plaid:params:cra-partner:experian"}),
        ("POST", "/admin/v1/admin-keys", {"name": "escalation"}),
    ]:
        response = await client.request(method, path, json=body, headers=bearer(key))
        assert_error(response, 403, "forbidden")
    after = await client.get(f"/admin/v1/tenants/{client_id}", headers=bearer(key))
    assert after.json()["name"] == "target"
    assert after.json()["status"] == "active"


async def test_revoked_key_is_401(client, runtime, write_key):
    name, key = await issue_key(runtime, "write")
    assert (await client.get("/admin/v1/tenants", headers=bearer(key))).status_code == 200
    row = await _key_row(runtime, name)
    response = await client.post(f"/admin/v1/admin-keys/{row.id}/revoke", headers=bearer(write_key[1]))
    assert response.status_code == 200, response.text
    assert response.json()["revoked_at"] is not None
    response = await client.get("/admin/v1/tenants", headers=bearer(key))
    assert_error(response, 401, "unauthorized", "invalid admin API key")


async def test_last_used_at_is_throttled_to_once_a_minute(client, runtime):
    name, key = await issue_key(runtime, "read")
    assert (await _key_row(runtime, name)).last_used_at is None
    await client.get("/admin/v1/audiences", headers=bearer(key))
    first = (await _key_row(runtime, name)).last_used_at
    assert first is not None
    await client.get("/admin/v1/audiences", headers=bearer(key))
    assert (await _key_row(runtime, name)).last_used_at == first
    two_minutes_ago = datetime.now(UTC) - timedelta(minutes=2)
    async with runtime.sessions() as session, session.begin():
        await session.execute(update(AdminKey).where(AdminKey.name == name).values(last_used_at=two_minutes_ago))
    await client.get("/admin/v1/audiences", headers=bearer(key))
    touched = (await _key_row(runtime, name)).last_used_at
    assert touched is not None
    assert touched > two_minutes_ago + timedelta(minutes=1)


async def test_changes_are_audited_with_the_key_name_as_actor(client, runtime, write_key):
    name, key = write_key
    response = await client.post("/admin/v1/tenants", json={"name": "audited"}, headers=bearer(key))
    client_id = response.json()["client_id"]
    (event,) = await audit_events(runtime, "tenant.created", client_id=client_id)
    assert event.actor == f"admin:{name}"
    assert event.request_id == response.headers["x-request-id"]
    assert response.json()["secret"] not in str(event.detail)


# --- /admin/v1/admin-keys -----------------------------------------------------------------------------


async def test_create_key_returns_it_once_and_it_works(client, runtime, write_key):
    name = f"ops-{uuid.uuid4().hex[:8]}"
    response = await client.post(
        "/admin/v1/admin-keys", json={"name": name, "scope": "read"}, headers=bearer(write_key[1])
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == name
    assert body["scope"] == "read"
    assert body["key"].startswith("bka-")
    assert body["revoked_at"] is None
    assert (await client.get("/admin/v1/tenants", headers=bearer(body["key"]))).status_code == 200
    listed = (await client.get("/admin/v1/admin-keys", headers=bearer(write_key[1]))).json()["data"]
    (entry,) = [k for k in listed if k["id"] == body["id"]]
    assert set(entry) == {"id", "name", "scope", "created_at", "last_used_at", "revoked_at"}
    assert body["key"] not in str(listed)
    (event,) = await audit_events(runtime, "admin_key.created", key_id=body["id"])
    assert body["key"] not in str(event.detail)


async def test_create_key_defaults_to_write(client, write_key):
    response = await client.post(
        "/admin/v1/admin-keys", json={"name": f"w-{uuid.uuid4().hex[:8]}"}, headers=bearer(write_key[1])
    )
    assert response.json()["scope"] == "write"


async def test_duplicate_live_key_name_is_409_but_reusable_after_revoke(client, write_key):
    name = f"dup-{uuid.uuid4().hex[:8]}"
    first = await client.post("/admin/v1/admin-keys", json={"name": name}, headers=bearer(write_key[1]))
    assert first.status_code == 201
    second = await client.post("/admin/v1/admin-keys", json={"name": name}, headers=bearer(write_key[1]))
    assert_error(second, 409, "conflict", name)
    await client.post(f"/admin/v1/admin-keys/{first.json()['id']}/revoke", headers=bearer(write_key[1]))
    third = await client.post("/admin/v1/admin-keys", json={"name": name}, headers=bearer(write_key[1]))
    assert third.status_code == 201


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "`name`"),
        ({"name": "x", "scope": "admin"}, "scope must be one of read, write"),
        ({"name": ""}, "name must be"),
        ({"name": "bad\nname"}, "name must be"),
        ({"name": "x" * 101}, "name must be"),
        ({"name": 5}, "$.name"),
        ({"name": "x", "extra": 1}, "unknown field `extra`"),
        ({"name": "a\u0000b"}, "NUL"),
    ],
)
async def test_create_key_validation(client, write_key, body, fragment):
    response = await client.post("/admin/v1/admin-keys", json=body, headers=bearer(write_key[1]))
    assert_error(response, 422, "validation_failed", fragment)


async def test_revoke_is_idempotent_and_unknown_ids_are_404(client, runtime, write_key):
    name, _ = await issue_key(runtime, "read")
    row = await _key_row(runtime, name)
    first = await client.post(f"/admin/v1/admin-keys/{row.id}/revoke", headers=bearer(write_key[1]))
    again = await client.post(f"/admin/v1/admin-keys/{row.id}/revoke", headers=bearer(write_key[1]))
    assert again.status_code == 200
    assert again.json()["revoked_at"] == first.json()["revoked_at"]
    assert len(await audit_events(runtime, "admin_key.revoked", key_id=str(row.id))) == 1
    for key_id in (uuid.uuid4(), "not-a-uuid", "%00"):
        response = await client.post(f"/admin/v1/admin-keys/{key_id}/revoke", headers=bearer(write_key[1]))
        assert_error(response, 404, "not_found")


async def test_concurrent_creates_with_one_name_yield_one_key(runtime):
    name = f"race-{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        async with runtime.sessions() as session, session.begin():
            await admin_keys.create_key(session, runtime.ring, name=name, scope="read", actor="t", request_id=None)

    async with runtime.sessions() as first, first.begin():
        await admin_keys.create_key(first, runtime.ring, name=name, scope="read", actor="t", request_id=None)
        second = asyncio.create_task(create())
        await asyncio.sleep(0.3)
        assert not second.done()  # waits for the first transaction (the per-name lock)
    with pytest.raises(errors.Conflict):
        await second
