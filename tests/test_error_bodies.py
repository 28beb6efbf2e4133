"""Gaps the existing hostile-input and leak tests leave: error bodies never echo a token or a secret,
wherever the caller put it, and a 10 000-entry audience list is refused fast with nothing stored.
"""

from __future__ import annotations

import json
import time

from sqlalchemy import func, select

from broker.db.models import Grant
from tests.oauth_helpers import EXCHANGE, USER, create_user, token_ok

FORM = {"content-type": "application/x-www-form-urlencoded"}


async def test_error_bodies_never_echo_a_token_or_secret(client, make_tenant):
    lender = await make_tenant("echo")
    pair = await token_ok(client, lender, grant_type="client_credentials")
    user = await create_user(client, lender)
    secrets_ = [pair["refresh_token"], pair["access_token"], user["user_token"], lender.secret]
    for value in secrets_:
        attempts = [
            ("/oauth/token", {"content": f"{value}=a&{value}=b", "headers": {**FORM, **lender.headers}}),
            ("/oauth/token", {"content": json.dumps({value: 1}), "headers": {"content-type": "application/json"}}),
            ("/oauth/token", {"json": {"grant_type": value}, "headers": lender.headers}),
            ("/oauth/token", {"json": {"grant_type": "client_credentials", "scope": value}, "headers": lender.headers}),
            (
                "/oauth/token",
                {
                    "json": {
                        "grant_type": EXCHANGE,
                        "subject_token": user["user_id"],
                        "subject_token_type": USER,
                        "audience": value,
                    },
                    "headers": lender.headers,
                },
            ),
            (
                "/oauth/token",
                {"json": {"grant_type": "client_credentials", "resource": value}, "headers": lender.headers},
            ),
            ("/oauth/introspect", {"json": {"token": [value, value]}, "headers": lender.headers}),
            (
                "/oauth/token",
                {"json": {"grant_type": "client_credentials"}, "headers": {"Authorization": f"Basic {value}"}},
            ),
            ("/user/get", {"json": {"user_id": 5, "user_token": value, value: value}, "headers": lender.headers}),
            ("/user/create", {"json": {"client_user_id": value * 10}, "headers": lender.headers}),
            ("/admin/v1/tenants", {"json": {"name": value}, "headers": {"Authorization": f"Bearer {value}"}}),
        ]
        for path, request in attempts:
            response = await client.post(path, **request)
            assert response.status_code >= 400, (path, response.text)
            assert value not in response.text, (path, request, response.text)


async def test_ten_thousand_audiences_are_refused_fast_and_store_nothing(client, make_tenant, sessions):
    lender = await make_tenant("many audiences")
    user = await create_user(client, lender)
    audiences = [f"urn:test:audience:{n}" for n in range(10_000)]
    base = {"grant_type": EXCHANGE, "subject_token": user["user_id"], "subject_token_type": USER}
    form = "&".join([*(f"{k}={v}" for k, v in base.items()), *(f"audience={a}" for a in audiences)])
    for request in (
        {"content": form, "headers": {**FORM, **lender.headers}},
        {"json": {**base, "audience": audiences}, "headers": lender.headers},
        {"json": {**base, "audience": ",".join(audiences)}, "headers": lender.headers},
    ):
        started = time.perf_counter()
        response = await client.post("/oauth/token", **request)
        assert time.perf_counter() - started < 1.0
        assert response.status_code in {400, 413}, response.text
        assert response.json()["error"] == "invalid_request"
        assert response.json()["request_id"]
    async with sessions() as session:
        count = await session.scalar(select(func.count()).select_from(Grant).where(Grant.tenant_id == lender.tenant_id))
    assert count == 0
