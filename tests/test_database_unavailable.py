"""With the database unreachable every endpoint answers a clean 503 with Retry-After, never a stack."""

from __future__ import annotations

import secrets

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url

from broker.app import create_app


@pytest.fixture
async def down_client(settings):
    broken = settings.model_copy(update={"database_url": "postgresql://postgres@127.0.0.1:1/nothing"})
    async with AsyncTestClient(app=create_app(broken)) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "body", "shape"),
    [
        ("/oauth/token", {"grant_type": "client_credentials"}, "error"),
        ("/oauth/introspect", {"token": "pda-x"}, "error"),
        ("/user/create", {"client_user_id": "u"}, "error_code"),
    ],
)
async def test_requests_get_503_with_retry_after(down_client, path, body, shape):
    response = await down_client.post(path, json=body, headers={"PLAID-CLIENT-ID": "a" * 24, "PLAID-SECRET": "b" * 32})
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"]
    payload = response.json()
    assert shape in payload
    assert payload["request_id"] == response.headers["x-request-id"]
    assert "127.0.0.1:1" not in response.text
    assert "Traceback" not in response.text


async def test_readiness_goes_red(down_client):
    response = await down_client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("unavailable")
    assert (await down_client.get("/healthz")).status_code == 200


async def test_a_statement_timeout_is_a_503_not_a_500(settings, make_tenant, sessions):
    """A request stuck behind a lock past the statement timeout answers 503 with Retry-After."""
    lender = await make_tenant()
    impatient = settings.model_copy(update={"db_statement_timeout_ms": 300})
    async with AsyncTestClient(app=create_app(impatient)) as client, sessions() as session, session.begin():
        await session.execute(text("LOCK TABLE grants IN ACCESS EXCLUSIVE MODE"))
        response = await client.post("/oauth/token", json={"grant_type": "client_credentials"}, headers=lender.headers)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"]
    assert response.json()["error"] == "temporarily_unavailable"


async def test_a_server_out_of_connections_is_a_503_not_a_500(settings, make_tenant, sessions):
    """``too many connections`` (SQLSTATE 53300) on the hot paths' pool is "try again later" too."""
    lender = await make_tenant()
    role = f"broker_full_{secrets.token_hex(4)}"
    async with sessions() as session, session.begin():
        await session.execute(text(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0'))
    try:
        full = settings.model_copy(
            update={"database_url": make_url(settings.database_url).set(username=role).render_as_string(False)}
        )
        async with AsyncTestClient(app=create_app(full)) as client:
            for path, body in (
                ("/oauth/token", {"grant_type": "client_credentials"}),
                ("/oauth/introspect", {"token": "pda-x"}),
            ):
                response = await client.post(path, json=body, headers=lender.headers)
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"]
    finally:
        async with sessions() as session, session.begin():
            await session.execute(text(f'DROP ROLE "{role}"'))
