"""Hostile and malformed bodies on ``/user/*``: always a Plaid error object with a request id, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.users_helpers import assert_ok, assert_plaid_error, call, create_user

PATHS = ["/user/create", "/user/get", "/user/update", "/user/remove"]


@pytest.fixture
async def lender(make_tenant):
    return await make_tenant("validating lender")


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[]", "application/json"),
        (b'[{"client_user_id": "x"}]', "application/json"),
        (b'"client_user_id"', "application/json"),
        (b"42", "application/json"),
        (b"null", "application/json"),
        (b"", "application/json"),
        (b"   ", "application/json"),
        (b"\xff\xfe{}", "application/json"),
        (b'{"client_user_id": "a", "client_user_id": "b"}', "application/json"),
        (b'{"user_id": "a", "user_id": "a"}', "application/json"),
        (b"client_user_id=x", "application/x-www-form-urlencoded"),
        (b'{"client_user_id": "x"}', "text/plain"),
        (json.dumps({"client_user_id": "x", "identity": nested(40)}).encode(), "application/json"),
        (json.dumps({f"k{i}": i for i in range(100)}).encode(), "application/json"),
    ],
    ids=[
        "not-json",
        "empty-array",
        "array",
        "string",
        "number",
        "null",
        "empty",
        "blank",
        "not-utf8",
        "duplicate-key",
        "duplicate-user-id",
        "form",
        "text-plain",
        "deep-nesting",
        "too-many-fields",
    ],
)
async def test_bad_bodies_are_invalid_body(client, lender, path, raw, content_type):
    response = await client.post(path, content=raw, headers={**lender.headers, "Content-Type": content_type})
    assert_plaid_error(response, "INVALID_REQUEST", "INVALID_BODY")


@pytest.mark.parametrize("path", PATHS)
async def test_a_body_over_the_size_limit_is_a_plaid_error(client, lender, path):
    body = json.dumps({"client_user_id": "x", "padding": "a" * (1024 * 1024 + 10)}).encode()
    response = await client.post(path, content=body, headers={**lender.headers, "Content-Type": "application/json"})
    assert_plaid_error(response, "INVALID_REQUEST", "INVALID_BODY", status=413)


CREATE_INVALID: list[tuple[str, dict[str, Any]]] = [
    ("int-client-user-id", {"client_user_id": 5}),
    ("bool-client-user-id", {"client_user_id": True}),
    ("list-client-user-id", {"client_user_id": ["x"]}),
    ("object-client-user-id", {"client_user_id": {"x": 1}}),
    ("empty-client-user-id", {"client_user_id": ""}),
    ("129-chars", {"client_user_id": "x" * 129}),
    ("nul-in-client-user-id", {"client_user_id": "a\x00b"}),
    ("nul-in-unknown-field", {"client_user_id": "ok", "note": "x\x00"}),
    ("nul-in-field-name", {"client_user_id": "ok", "no\x00te": "x"}),
    ("nul-in-identity", {"client_user_id": "ok", "identity": {"name": {"given_name": "\x00", "family_name": "x"}}}),
    ("nul-deep-in-list", {"client_user_id": "ok", "extra": [[["\x00"]]]}),
    ("identity-list", {"client_user_id": "ok", "identity": []}),
    ("identity-string", {"client_user_id": "ok", "identity": "Ada"}),
    ("identity-name-string", {"client_user_id": "ok", "identity": {"name": "Ada Lovelace"}}),
    ("identity-name-partial", {"client_user_id": "ok", "identity": {"name": {"given_name": "Ada"}}}),
    ("identity-name-null", {"client_user_id": "ok", "identity": {"name": None}}),
    ("identity-bad-date", {"client_user_id": "ok", "identity": {"date_of_birth": "10/12/1815"}}),
    ("identity-email-shape", {"client_user_id": "ok", "identity": {"emails": ["ada@example.com"]}}),
    ("identity-email-primary", {"client_user_id": "ok", "identity": {"emails": [{"data": "a", "primary": "yes"}]}}),
    ("identity-too-large", {"client_user_id": "ok", "identity": {"x": "a" * 20_000}}),
    ("report-identity-list", {"client_user_id": "ok", "consumer_report_user_identity": ["x"]}),
    ("report-identity-too-large", {"client_user_id": "ok", "consumer_report_user_identity": {"x": "a" * 20_000}}),
    ("upgraded-string", {"client_user_id": "ok", "with_upgraded_user": "true"}),
    ("end-customer-int", {"client_user_id": "ok", "end_customer": 1}),
    ("end-customer-long", {"client_user_id": "ok", "end_customer": "x" * 129}),
    ("secret-int", {"client_user_id": "ok", "secret": 123}),
    ("client-id-list", {"client_user_id": "ok", "client_id": ["a"]}),
]


@pytest.mark.parametrize("body", [b for _, b in CREATE_INVALID], ids=[i for i, _ in CREATE_INVALID])
async def test_create_with_a_bad_field_is_invalid_field(client, lender, body):
    response = await call(client, "/user/create", lender, **body)
    assert_plaid_error(response, "INVALID_REQUEST", "INVALID_FIELD")


async def test_identity_with_nulls_where_the_sdk_allows_them_is_accepted(client, lender):
    identity = {
        "date_of_birth": None,
        "addresses": [{"country": "US", "primary": True, "street_1": None, "city": "Boston"}],
        "id_numbers": [{"value": "123456789", "type": "us_ssn"}],
        "future": {"anything": [1, None]},
    }
    created = await create_user(client, lender, identity=identity)
    got = assert_ok(await call(client, "/user/get", lender, user_id=created["user_id"]))
    assert got["identity"] == identity


@pytest.mark.parametrize("body", [{}, {"client_user_id": None}, {"identity": {"name": None}}], ids=str)
async def test_create_without_client_user_id_is_missing_fields(client, lender, body):
    response = await call(client, "/user/create", lender, **body)
    error = assert_plaid_error(response, "INVALID_REQUEST", "MISSING_FIELDS")
    assert "client_user_id" in error["error_message"]


@pytest.mark.parametrize("path", ["/user/get", "/user/remove"])
@pytest.mark.parametrize(
    "body",
    [{"user_id": 7}, {"user_token": ["t"]}, {"user_id": ""}, {"user_id": "usr_\x00"}, {"user_id": "x" * 600}],
    ids=str,
)
async def test_bad_user_reference_is_invalid_field(client, lender, path, body):
    response = await call(client, path, lender, **body)
    assert_plaid_error(response, "INVALID_REQUEST", "INVALID_FIELD")


@pytest.mark.parametrize("path", ["/user/get", "/user/remove"])
async def test_missing_user_reference_is_missing_fields(client, lender, path):
    response = await call(client, path, lender, unrelated="x")
    assert_plaid_error(response, "INVALID_REQUEST", "MISSING_FIELDS")


@pytest.mark.parametrize(
    "body",
    [
        {"identity": "x"},
        {"identity": {"emails": "x"}},
        {"consumer_report_user_identity": 5},
        {"identity": {"x": "a" * 20_000}},
    ],
    ids=["identity-string", "emails-string", "report-int", "too-large"],
)
async def test_update_with_bad_identity_is_invalid_field(client, lender, body):
    created = await create_user(client, lender)
    response = await call(client, "/user/update", lender, user_id=created["user_id"], **body)
    assert_plaid_error(response, "INVALID_REQUEST", "INVALID_FIELD")


async def test_identity_growing_past_the_limit_through_merges_is_refused(client, lender):
    created = await create_user(client, lender, identity={"a": "x" * 9000})
    response = await call(client, "/user/update", lender, user_id=created["user_id"], identity={"b": "y" * 9000})
    assert_plaid_error(response, "INVALID_REQUEST", "INVALID_FIELD")
    got = assert_ok(await call(client, "/user/get", lender, user_id=created["user_id"]))
    assert got["identity"] == {"a": "x" * 9000}


async def test_body_validation_happens_before_authentication(client):
    response = await client.post("/user/create", content=b"[1]", headers={"Content-Type": "application/json"})
    assert_plaid_error(response, "INVALID_REQUEST", "INVALID_BODY")


async def test_get_and_method_not_allowed_are_plaid_errors(client):
    response = await client.get("/user/create")
    assert response.status_code == 405
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert response.json()["error_type"] == "INVALID_REQUEST"
