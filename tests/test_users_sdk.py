"""The user endpoints driven by the official plaid-python SDK and by concurrent raw HTTP, on a live server."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date, datetime

import httpx
import plaid
import pytest
from plaid.api import plaid_api
from plaid.model.client_user_identity import ClientUserIdentity
from plaid.model.client_user_identity_email import ClientUserIdentityEmail
from plaid.model.client_user_identity_name import ClientUserIdentityName
from plaid.model.client_user_identity_phone_number import ClientUserIdentityPhoneNumber
from plaid.model.user_create_request import UserCreateRequest
from plaid.model.user_get_request import UserGetRequest
from plaid.model.user_remove_request import UserRemoveRequest
from plaid.model.user_update_request import UserUpdateRequest
from sqlalchemy import text


def sdk(url: str, client_id: str, secret: str) -> plaid_api.PlaidApi:
    configuration = plaid.Configuration(host=url, api_key={"clientId": client_id, "secret": secret})
    configuration.retries = 0
    return plaid_api.PlaidApi(plaid.ApiClient(configuration))


@pytest.fixture
async def lender(make_tenant):
    return await make_tenant("sdk lender")


async def test_user_lifecycle_through_plaid_python(live_server, lender):
    api = sdk(live_server.url, lender.client_id, lender.secret)
    client_user_id = f"sdk-{uuid.uuid4().hex[:8]}"
    identity = ClientUserIdentity(
        name=ClientUserIdentityName(given_name="Katherine", family_name="Johnson"),
        date_of_birth=date(1918, 8, 26),
        emails=[ClientUserIdentityEmail(data="kj@example.com", primary=True)],
    )

    created = await asyncio.to_thread(
        api.user_create, UserCreateRequest(client_user_id=client_user_id, identity=identity)
    )
    assert created.user_id.startswith("usr_")
    assert created.user_token.startswith("user-sandbox-")
    assert created.request_id

    again = await asyncio.to_thread(api.user_create, UserCreateRequest(client_user_id=client_user_id))
    assert (again.user_id, again.user_token) == (created.user_id, created.user_token)

    got = await asyncio.to_thread(api.user_get, UserGetRequest(user_id=created.user_id))
    assert got.user_id == created.user_id
    assert got.client_user_id == client_user_id
    assert isinstance(got.created_at, datetime)
    assert got.created_at.tzinfo is not None
    assert got.identity.name.given_name == "Katherine"
    assert got.identity.date_of_birth == date(1918, 8, 26)
    assert "updated_at" not in got

    update = UserUpdateRequest(
        user_id=created.user_id,
        identity=ClientUserIdentity(phone_numbers=[ClientUserIdentityPhoneNumber(data="+12025550143", primary=True)]),
    )
    updated = await asyncio.to_thread(api.user_update, update)
    assert updated.request_id

    got = await asyncio.to_thread(api.user_get, UserGetRequest(user_id=created.user_id))
    assert got.identity.emails[0].data == "kj@example.com"
    assert got.identity.phone_numbers[0].data == "+12025550143"
    assert got.updated_at.tzinfo is not None
    assert got.updated_at >= got.created_at

    removed = await asyncio.to_thread(api.user_remove, UserRemoveRequest(user_token=created.user_token))
    assert removed.request_id

    with pytest.raises(plaid.ApiException) as caught:
        await asyncio.to_thread(api.user_get, UserGetRequest(user_id=created.user_id))
    assert caught.value.status == 400
    error = json.loads(caught.value.body)
    assert error["error_type"] == "USER_ERROR"
    assert error["error_code"] == "USER_NOT_FOUND"
    assert error["request_id"]
    assert error["display_message"] is None


async def test_plaid_python_with_body_credentials(live_server, lender):
    configuration = plaid.Configuration(host=live_server.url)
    configuration.retries = 0
    api = plaid_api.PlaidApi(plaid.ApiClient(configuration))
    request = UserCreateRequest(client_user_id="body-only", client_id=lender.client_id, secret=lender.secret)
    created = await asyncio.to_thread(api.user_create, request)
    got = await asyncio.to_thread(
        api.user_get, UserGetRequest(user_id=created.user_id, client_id=lender.client_id, secret=lender.secret)
    )
    assert got.client_user_id == "body-only"


async def test_plaid_python_sees_bad_keys_as_an_api_exception(live_server, lender):
    api = sdk(live_server.url, lender.client_id, "0" * 32)
    with pytest.raises(plaid.ApiException) as caught:
        await asyncio.to_thread(api.user_create, UserCreateRequest(client_user_id="denied"))
    assert caught.value.status == 400
    error = json.loads(caught.value.body)
    assert (error["error_type"], error["error_code"]) == ("INVALID_INPUT", "INVALID_API_KEYS")
    assert error["request_id"] == caught.value.headers["x-request-id"]


async def test_concurrent_creates_on_a_live_server_make_one_user(live_server, lender, sessions):
    client_user_id = f"race-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=live_server.url, headers=lender.headers, timeout=30) as http:
        responses = await asyncio.gather(
            *(http.post("/user/create", json={"client_user_id": client_user_id}) for _ in range(20))
        )
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
    bodies = [r.json() for r in responses]
    assert len({(b["user_id"], b["user_token"]) for b in bodies}) == 1
    assert len({b["request_id"] for b in bodies}) == 20
    async with sessions() as session:
        rows = (
            await session.execute(
                text("SELECT count(*) FROM users WHERE tenant_id = :t AND client_user_id = :c"),
                {"t": lender.tenant_id, "c": client_user_id},
            )
        ).scalar_one()
        created_events = (
            await session.execute(
                text("SELECT count(*) FROM audit_events WHERE user_id = :u AND action = 'user.created'"),
                {"u": bodies[0]["user_id"]},
            )
        ).scalar_one()
    assert rows == 1
    assert created_events == 1


async def test_concurrent_removes_on_a_live_server_remove_once(live_server, lender, sessions):
    async with httpx.AsyncClient(base_url=live_server.url, headers=lender.headers, timeout=30) as http:
        created = (await http.post("/user/create", json={"client_user_id": "remove-race"})).json()
        responses = await asyncio.gather(
            *(http.post("/user/remove", json={"user_id": created["user_id"]}) for _ in range(10))
        )
    codes = sorted(r.json().get("error_code", "OK") for r in responses)
    assert codes == ["OK"] + ["USER_NOT_FOUND"] * 9
    async with sessions() as session:
        removed_events = (
            await session.execute(
                text("SELECT count(*) FROM audit_events WHERE user_id = :u AND action = 'user.removed'"),
                {"u": created["user_id"]},
            )
        ).scalar_one()
    assert removed_events == 1


async def test_an_oversized_body_on_the_live_server_is_a_plaid_error(live_server, lender, settings):
    # Just over the limit: a much larger upload can be cut off by the server's early 413 and surface as a
    # connection reset on the client; the 1 MB case is covered in-process (test_users_validation.py).
    body = json.dumps({"client_user_id": "big", "pad": "x" * (settings.max_body_bytes + 1024)})
    async with httpx.AsyncClient(base_url=live_server.url, headers=lender.headers, timeout=30) as http:
        response = await http.post("/user/create", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    error = response.json()
    assert error["error_code"] == "INVALID_BODY"
    assert error["request_id"] == response.headers["x-request-id"]
