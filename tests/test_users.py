"""``/user/*``: lifecycle, idempotency, identity merging, credentials and tenant isolation."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

import pytest
from sqlalchemy import select

from broker.db.models import AuditEvent
from tests.users_helpers import assert_ok, assert_plaid_error, call, create_user

USER_TOKEN = re.compile(r"^user-sandbox-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
USER_ID = re.compile(r"^usr_[0-9A-Za-z]{22}$")

IDENTITY = {
    "name": {"given_name": "Ada", "family_name": "Lovelace"},
    "date_of_birth": "1815-12-10",
    "emails": [{"data": "ada@example.com", "primary": True}],
}


@pytest.fixture
async def lender(make_tenant):
    return await make_tenant("lender")


@pytest.fixture
async def other(make_tenant):
    return await make_tenant("other lender")


async def audit_actions(sessions, tenant_id, user_id) -> list[AuditEvent]:
    async with sessions() as session:
        result = await session.execute(
            select(AuditEvent)
            .where(AuditEvent.tenant_id == tenant_id, AuditEvent.user_id == user_id)
            .order_by(AuditEvent.id)
        )
        return list(result.scalars())


# --- create ----------------------------------------------------------------------------------------


async def test_create_returns_user_id_and_user_token(client, lender):
    response = await call(client, "/user/create", lender, client_user_id="c-1")
    body = assert_ok(response)
    assert set(body) == {"user_id", "user_token", "request_id"}
    assert USER_ID.match(body["user_id"])
    assert USER_TOKEN.match(body["user_token"])


async def test_create_is_idempotent_on_client_user_id(client, lender, sessions):
    first = await create_user(client, lender, "same-person")
    second = await create_user(client, lender, "same-person")
    assert (second["user_id"], second["user_token"]) == (first["user_id"], first["user_token"])
    assert second["request_id"] != first["request_id"]
    events = await audit_actions(sessions, lender.tenant_id, first["user_id"])
    assert [e.action for e in events] == ["user.created"]
    assert events[0].actor == lender.client_id


async def test_repeated_create_does_not_change_the_stored_identity(client, lender):
    first = await create_user(client, lender, "stable", identity=IDENTITY)
    again = await create_user(client, lender, "stable", identity={"name": {"given_name": "X", "family_name": "Y"}})
    assert again["user_id"] == first["user_id"]
    got = assert_ok(await call(client, "/user/get", lender, user_id=first["user_id"]))
    assert got["identity"] == IDENTITY


async def test_distinct_client_user_ids_make_distinct_users(client, lender):
    a = await create_user(client, lender, "a")
    b = await create_user(client, lender, "b")
    assert a["user_id"] != b["user_id"]
    assert a["user_token"] != b["user_token"]


async def test_client_user_id_of_128_characters_is_accepted(client, lender):
    await create_user(client, lender, "x" * 128)
    await create_user(client, lender, "é" * 128)


async def test_unknown_and_null_fields_are_ignored(client, lender):
    body = assert_ok(
        await call(
            client,
            "/user/create",
            lender,
            client_user_id="extra-fields",
            with_upgraded_user=True,
            end_customer="acme",
            identity=None,
            some_future_field={"nested": [1, 2, {"x": None}]},
        )
    )
    got = assert_ok(await call(client, "/user/get", lender, user_id=body["user_id"], future=1))
    assert "identity" not in got


async def test_same_client_user_id_in_two_tenants_makes_two_users(client, lender, other):
    a = await create_user(client, lender, "shared-id")
    b = await create_user(client, other, "shared-id")
    assert a["user_id"] != b["user_id"]


# --- get -------------------------------------------------------------------------------------------


async def test_get_returns_the_user_with_utc_timestamps(client, lender):
    created = await create_user(client, lender, "getme", identity=IDENTITY)
    got = assert_ok(await call(client, "/user/get", lender, user_id=created["user_id"]))
    assert got["user_id"] == created["user_id"]
    assert got["client_user_id"] == "getme"
    assert got["identity"] == IDENTITY
    assert got["created_at"].endswith("Z")
    assert datetime.fromisoformat(got["created_at"]).tzinfo is not None
    assert "updated_at" not in got
    assert "user_token" not in got


async def test_get_by_user_token_or_by_both(client, lender, other):
    created = await create_user(client, lender)
    by_token = assert_ok(await call(client, "/user/get", lender, user_token=created["user_token"]))
    assert by_token["user_id"] == created["user_id"]
    both = assert_ok(
        await call(client, "/user/get", lender, user_id=created["user_id"], user_token=created["user_token"])
    )
    assert both["user_id"] == created["user_id"]
    someone_else = await create_user(client, lender)
    mismatch = await call(
        client, "/user/get", lender, user_id=created["user_id"], user_token=someone_else["user_token"]
    )
    assert_plaid_error(mismatch, "USER_ERROR", "USER_NOT_FOUND")


async def test_get_unknown_user_is_user_not_found(client, lender):
    response = await call(client, "/user/get", lender, user_id="usr_doesnotexist")
    assert_plaid_error(response, "USER_ERROR", "USER_NOT_FOUND")
    response = await call(client, "/user/get", lender, user_token=f"user-sandbox-{uuid.uuid4()}")
    assert_plaid_error(response, "USER_ERROR", "USER_NOT_FOUND")


# --- update ----------------------------------------------------------------------------------------


async def test_update_merges_identity(client, lender, sessions):
    created = await create_user(client, lender, identity=IDENTITY)
    phones = [{"data": "+14155550123", "primary": True}]
    response = await call(
        client,
        "/user/update",
        lender,
        user_id=created["user_id"],
        identity={"phone_numbers": phones, "name": {"given_name": "Augusta", "family_name": "King"}},
    )
    body = assert_ok(response)
    assert set(body) == {"request_id"}
    got = assert_ok(await call(client, "/user/get", lender, user_id=created["user_id"]))
    assert got["identity"] == {
        "name": {"given_name": "Augusta", "family_name": "King"},
        "date_of_birth": "1815-12-10",
        "emails": IDENTITY["emails"],
        "phone_numbers": phones,
    }
    assert got["updated_at"].endswith("Z")
    assert got["updated_at"] >= got["created_at"]
    events = await audit_actions(sessions, lender.tenant_id, created["user_id"])
    updated = [e for e in events if e.action == "user.updated"]
    assert len(updated) == 1
    assert updated[0].detail == {"fields": ["identity"]}


async def test_update_by_user_token_sets_identity_on_a_user_without_one(client, lender):
    created = await create_user(client, lender)
    assert_ok(await call(client, "/user/update", lender, user_token=created["user_token"], identity=IDENTITY))
    got = assert_ok(await call(client, "/user/get", lender, user_id=created["user_id"]))
    assert got["identity"] == IDENTITY


async def test_consumer_report_identity_is_kept_apart_and_merged(client, lender):
    report = {"first_name": "Ada", "last_name": "Lovelace", "emails": ["ada@example.com"]}
    created = await create_user(client, lender, consumer_report_user_identity=report)
    assert_ok(
        await call(
            client,
            "/user/update",
            lender,
            user_id=created["user_id"],
            consumer_report_user_identity={"phone_numbers": ["+14155550123"]},
        )
    )
    got = assert_ok(await call(client, "/user/get", lender, user_id=created["user_id"]))
    assert "identity" not in got
    assert got["consumer_report_user_identity"] == {**report, "phone_numbers": ["+14155550123"]}


async def test_update_requires_identity_and_a_user(client, lender):
    created = await create_user(client, lender)
    response = await call(client, "/user/update", lender, user_id=created["user_id"])
    assert_plaid_error(response, "INVALID_REQUEST", "MISSING_FIELDS")
    response = await call(client, "/user/update", lender, identity=IDENTITY)
    assert_plaid_error(response, "INVALID_REQUEST", "MISSING_FIELDS")


async def test_update_unknown_user_is_user_not_found(client, lender):
    response = await call(client, "/user/update", lender, user_id="usr_nobody", identity=IDENTITY)
    assert_plaid_error(response, "USER_ERROR", "USER_NOT_FOUND")


# --- remove ----------------------------------------------------------------------------------------


async def test_remove_then_user_is_gone_and_create_makes_a_new_one(client, lender, sessions):
    created = await create_user(client, lender, "leaving", identity=IDENTITY)
    body = assert_ok(await call(client, "/user/remove", lender, user_id=created["user_id"]))
    assert set(body) == {"request_id"}

    for path, extra in (("/user/get", {}), ("/user/update", {"identity": IDENTITY}), ("/user/remove", {})):
        response = await call(client, path, lender, user_id=created["user_id"], **extra)
        assert_plaid_error(response, "USER_ERROR", "USER_NOT_FOUND")
        response = await call(client, path, lender, user_token=created["user_token"], **extra)
        assert_plaid_error(response, "USER_ERROR", "USER_NOT_FOUND")

    again = await create_user(client, lender, "leaving")
    assert again["user_id"] != created["user_id"]
    assert again["user_token"] != created["user_token"]
    got = assert_ok(await call(client, "/user/get", lender, user_id=again["user_id"]))
    assert "identity" not in got

    events = await audit_actions(sessions, lender.tenant_id, created["user_id"])
    assert [e.action for e in events] == ["user.created", "user.removed"]
    assert events[1].detail == {"grants_revoked": 0}


async def test_remove_by_user_token(client, lender):
    created = await create_user(client, lender)
    assert_ok(await call(client, "/user/remove", lender, user_token=created["user_token"]))
    response = await call(client, "/user/get", lender, user_id=created["user_id"])
    assert_plaid_error(response, "USER_ERROR", "USER_NOT_FOUND")


async def test_remove_requires_a_user_reference(client, lender):
    response = await call(client, "/user/remove", lender)
    assert_plaid_error(response, "INVALID_REQUEST", "MISSING_FIELDS")


# --- tenant isolation ------------------------------------------------------------------------------


async def test_another_tenant_cannot_get_update_or_remove_a_user(client, lender, other):
    created = await create_user(client, lender, identity=IDENTITY)
    for ref in ({"user_id": created["user_id"]}, {"user_token": created["user_token"]}):
        assert_plaid_error(await call(client, "/user/get", other, **ref), "USER_ERROR", "USER_NOT_FOUND")
        response = await call(client, "/user/update", other, identity={"date_of_birth": "2000-01-01"}, **ref)
        assert_plaid_error(response, "USER_ERROR", "USER_NOT_FOUND")
        assert_plaid_error(await call(client, "/user/remove", other, **ref), "USER_ERROR", "USER_NOT_FOUND")
    got = assert_ok(await call(client, "/user/get", lender, user_id=created["user_id"]))
    assert got["identity"] == IDENTITY
    assert "updated_at" not in got


async def test_another_tenant_creating_the_same_client_user_id_does_not_get_the_token(client, lender, other):
    mine = await create_user(client, lender, "victim")
    theirs = await create_user(client, other, "victim")
    assert theirs["user_token"] != mine["user_token"]
    assert theirs["user_id"] != mine["user_id"]


# --- credentials -----------------------------------------------------------------------------------


async def test_credentials_in_the_body(client, lender):
    response = await client.post("/user/create", json={**lender.body, "client_user_id": "body-creds"})
    created = assert_ok(response)
    response = await client.post("/user/get", json={**lender.body, "user_id": created["user_id"]})
    assert assert_ok(response)["client_user_id"] == "body-creds"


async def test_same_credentials_in_headers_and_body_are_accepted(client, lender):
    response = await client.post("/user/create", json={**lender.body, "client_user_id": "both"}, headers=lender.headers)
    assert_ok(response)


@pytest.mark.parametrize(
    "variant",
    ["wrong_secret", "unknown_client", "no_credentials", "id_only", "secret_only", "header_id_body_secret_wrong"],
)
async def test_bad_credentials_are_invalid_api_keys(client, lender, variant):
    headers: dict[str, str] = {}
    body: dict[str, str] = {"client_user_id": "nope"}
    if variant == "wrong_secret":
        headers = {**lender.headers, "PLAID-SECRET": "0" * 32}
    elif variant == "unknown_client":
        headers = {"PLAID-CLIENT-ID": "f" * 24, "PLAID-SECRET": lender.secret}
    elif variant == "id_only":
        headers = {"PLAID-CLIENT-ID": lender.client_id}
    elif variant == "secret_only":
        body["secret"] = lender.secret
    elif variant == "header_id_body_secret_wrong":
        headers = {"PLAID-CLIENT-ID": lender.client_id}
        body["secret"] = "0" * 32
    response = await client.post("/user/create", json=body, headers=headers)
    assert_plaid_error(response, "INVALID_INPUT", "INVALID_API_KEYS")


async def test_disabled_tenant_is_refused(client, make_tenant):
    disabled = await make_tenant("gone", status="disabled")
    response = await call(client, "/user/create", disabled, client_user_id="x")
    assert_plaid_error(response, "INVALID_INPUT", "INVALID_API_KEYS")


async def test_headers_and_body_that_disagree_are_refused(client, lender, other):
    response = await client.post("/user/create", json={**other.body, "client_user_id": "mixed"}, headers=lender.headers)
    body = assert_plaid_error(response, "INVALID_REQUEST", "INVALID_BODY")
    assert "disagree" in body["error_message"]
    response = await client.post(
        "/user/create",
        json={"secret": other.secret, "client_user_id": "mixed"},
        headers=lender.headers,
    )
    assert_plaid_error(response, "INVALID_REQUEST", "INVALID_BODY")


async def test_plaid_version_header_is_accepted(client, lender):
    response = await client.post(
        "/user/create", json={"client_user_id": "v"}, headers={**lender.headers, "Plaid-Version": "2020-09-14"}
    )
    assert_ok(response)


async def test_error_bodies_never_echo_the_secret(client, lender):
    response = await client.post(
        "/user/create", json={"client_user_id": "x"}, headers={**lender.headers, "PLAID-SECRET": "s3cr3t-value"}
    )
    assert "s3cr3t-value" not in response.text
    assert lender.secret not in response.text


async def test_openapi_schema_lists_the_user_endpoints(client):
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/user/create", "/user/get", "/user/update", "/user/remove"} <= set(paths)
