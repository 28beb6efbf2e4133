"""With the database unreachable every endpoint answers a clean 503 with Retry-After, never a stack."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

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
