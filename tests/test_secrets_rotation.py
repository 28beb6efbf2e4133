"""Client secret rotation with an overlap, revocation by id, listings without values; admin keys on the CLI."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from click.testing import CliRunner

from broker.cli.main import cli
from tests.admin_helpers import assert_error, audit_events, bearer, issue_key
from tests.conftest import Client

SECRET_FIELDS = {"id", "algorithm", "created_at", "last_used_at", "expires_at", "revoked_at", "live"}


@pytest.fixture(scope="module")
async def headers(runtime):
    _, key = await issue_key(runtime, "write")
    return bearer(key)


async def _token(client, client_id: str, secret: str) -> int:
    response = await client.post(
        "/oauth/token",
        json={"grant_type": "client_credentials"},
        headers={"PLAID-CLIENT-ID": client_id, "PLAID-SECRET": secret},
    )
    return int(response.status_code)


async def test_rotation_overlaps_then_the_old_secret_expires(client, make_tenant, headers):
    lender = await make_tenant("rotating lender")
    assert await _token(client, lender.client_id, lender.secret) == 200
    response = await client.post(
        f"/admin/v1/tenants/{lender.client_id}/secrets", json={"overlap_seconds": 2}, headers=headers
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == SECRET_FIELDS | {"secret", "others"}
    assert body["algorithm"] == "hmac-sha256"
    assert body["live"] is True
    (old,) = body["others"]
    assert old["live"] is True
    assert old["expires_at"] is not None
    assert old["last_used_at"] is not None  # it authenticated above
    # both work during the overlap
    assert await _token(client, lender.client_id, lender.secret) == 200
    assert await _token(client, lender.client_id, body["secret"]) == 200
    await asyncio.sleep(2.2)
    # then only the new one
    assert await _token(client, lender.client_id, lender.secret) == 401
    assert await _token(client, lender.client_id, body["secret"]) == 200

    listed = await client.get(f"/admin/v1/tenants/{lender.client_id}/secrets", headers=headers)
    assert listed.status_code == 200
    rows = listed.json()["data"]
    assert [r["id"] for r in rows] == [body["id"], old["id"]]  # newest first
    assert all(set(r) == SECRET_FIELDS for r in rows)
    assert [r["live"] for r in rows] == [True, False]
    assert body["secret"] not in listed.text
    assert lender.secret not in listed.text
    assert "hmac-sha256$" not in listed.text


async def test_default_overlap_keeps_the_old_secret_for_a_day_and_zero_ends_it_now(client, make_tenant, headers):
    lender = await make_tenant("day overlap")
    first = (await client.post(f"/admin/v1/tenants/{lender.client_id}/secrets", headers=headers)).json()
    assert await _token(client, lender.client_id, lender.secret) == 200
    (old,) = first["others"]
    assert old["expires_at"] > first["created_at"]
    second = (
        await client.post(f"/admin/v1/tenants/{lender.client_id}/secrets", json={"overlap_seconds": 0}, headers=headers)
    ).json()
    assert await _token(client, lender.client_id, lender.secret) == 401
    assert await _token(client, lender.client_id, first["secret"]) == 401
    assert await _token(client, lender.client_id, second["secret"]) == 200


async def test_revoking_a_secret_by_id(client, make_tenant, headers, runtime):
    lender = await make_tenant("revoking lender")
    new = (await client.post(f"/admin/v1/tenants/{lender.client_id}/secrets", headers=headers)).json()
    old_id = new["others"][0]["id"]
    response = await client.post(f"/admin/v1/tenants/{lender.client_id}/secrets/{old_id}/revoke", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["revoked_at"] is not None
    assert response.json()["live"] is False
    assert await _token(client, lender.client_id, lender.secret) == 401
    assert await _token(client, lender.client_id, new["secret"]) == 200
    # DELETE does the same, and revoking twice changes nothing
    again = await client.delete(f"/admin/v1/tenants/{lender.client_id}/secrets/{old_id}", headers=headers)
    assert again.status_code == 200
    assert again.json()["revoked_at"] == response.json()["revoked_at"]
    assert len(await audit_events(runtime, "tenant.secret_revoked", secret_id=old_id)) == 1
    (rotated,) = await audit_events(runtime, "tenant.secret_rotated", secret_id=new["id"])
    assert rotated.detail["expiring"] == [old_id]
    assert new["secret"] not in json.dumps(rotated.detail)


async def test_secret_errors(client, make_tenant, headers, runtime):
    lender = await make_tenant("errors")
    other = await make_tenant("someone else")
    other_secret = (await client.get(f"/admin/v1/tenants/{other.client_id}/secrets", headers=headers)).json()["data"]
    base = f"/admin/v1/tenants/{lender.client_id}/secrets"
    assert_error(await client.post(base, json={"overlap_seconds": -1}, headers=headers), 422, "validation_failed")
    assert_error(await client.post(base, json={"overlap_seconds": 10**9}, headers=headers), 422, "validation_failed")
    assert_error(await client.post(base, json={"overlap": 5}, headers=headers), 422, "validation_failed", "overlap")
    assert_error(await client.post(base, json={"overlap_seconds": "5"}, headers=headers), 422, "validation_failed")
    unknown = "/admin/v1/tenants/000000000000000000000000/secrets"
    assert_error(await client.post(unknown, headers=headers), 404, "not_found")
    assert_error(await client.get(unknown, headers=headers), 404, "not_found")
    assert_error(await client.post(f"{base}/not-a-uuid/revoke", headers=headers), 404, "not_found")
    # another tenant's secret id is not this tenant's
    assert_error(await client.post(f"{base}/{other_secret[0]['id']}/revoke", headers=headers), 404, "not_found")
    _, read_key = await issue_key(runtime, "read")
    assert_error(await client.post(base, headers=bearer(read_key)), 403, "forbidden")
    assert (await client.get(base, headers=bearer(read_key))).status_code == 200


def _broker(*args: str) -> Any:
    """The CLI, run in this process (on a worker thread: each command runs its own event loop)."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


async def test_rotate_secret_on_the_cli(client, make_tenant):
    lender: Client = await make_tenant("cli rotation")
    result = await asyncio.to_thread(_broker, "tenants", "rotate-secret", lender.client_id, "--overlap", "0", "--json")
    assert result.exit_code == 0, result.output
    rotated = json.loads(result.output)
    assert await _token(client, lender.client_id, rotated["secret"]) == 200
    assert await _token(client, lender.client_id, lender.secret) == 401
    listed = await asyncio.to_thread(_broker, "tenants", "secrets", lender.client_id, "--json")
    assert [s["live"] for s in json.loads(listed.output)] == [True, False]
    assert rotated["secret"] not in listed.output
    revoked = await asyncio.to_thread(_broker, "tenants", "revoke-secret", lender.client_id, rotated["id"])
    assert revoked.exit_code == 0, revoked.output
    assert await _token(client, lender.client_id, rotated["secret"]) == 401


async def test_admin_keys_listed_and_revoked_on_the_cli(client, runtime):
    name, key = await issue_key(runtime, "read")
    assert (await client.get("/admin/v1/tenants", headers=bearer(key))).status_code == 200
    listed = json.loads((await asyncio.to_thread(_broker, "admin", "list-keys", "--json")).output)
    (mine,) = [k for k in listed if k["name"] == name]
    assert set(mine) == {"id", "name", "scope", "created_at", "last_used_at", "revoked_at"}
    assert mine["scope"] == "read"
    assert key not in json.dumps(listed)
    revoked = await asyncio.to_thread(_broker, "admin", "revoke-key", mine["id"])
    assert revoked.exit_code == 0, revoked.output
    assert (await client.get("/admin/v1/tenants", headers=bearer(key))).status_code == 401
