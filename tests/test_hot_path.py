"""The hot path (``broker.http.hot``) answers exactly as Litestar's own routes do.

Two apps with the same settings: the one ``create_app`` builds (``/oauth/token`` and ``/oauth/introspect``
served by ``BrokerApp`` directly) and one whose hot table is emptied, so that every request goes through
Litestar's router, handler and response objects. The same requests must get the same status, headers and
body (request ids and freshly minted tokens aside).
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from broker.app import create_app
from broker.http.hot import BrokerApp
from broker.settings import Settings

VOLATILE_HEADERS = {"x-request-id", "date"}
TOKEN = re.compile(r"(pda-|pdr-)[A-Za-z0-9_\-=]+")
FORM = {"content-type": "application/x-www-form-urlencoded"}
BASIC = {"authorization": "Basic " + base64.b64encode(b"a:b").decode()}


@pytest.fixture(scope="module")
async def hot(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(settings)
    assert isinstance(app, BrokerApp)
    async with AsyncTestClient(app=app, base_url="http://broker.test") as client:
        yield client


@pytest.fixture(scope="module")
async def routed(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(settings)
    assert isinstance(app, BrokerApp)
    app._hot = MappingProxyType({})  # every request through Litestar's router
    async with AsyncTestClient(app=app, base_url="http://broker.test") as client:
        yield client


def _shape(response: httpx.Response) -> tuple[int, dict[str, str], str]:
    """Status, headers and body with the per-request values (request id, tokens) masked."""
    request_id = response.headers["x-request-id"]
    headers = {k: v for k, v in response.headers.items() if k not in VOLATILE_HEADERS}
    if "content-length" in headers:  # tokens of one kind have one length, so only the request id varies it
        headers["content-length"] = str(int(headers["content-length"]) - len(request_id))
    body = TOKEN.sub(r"\1<token>", response.text.replace(request_id, "<request-id>"))
    return response.status_code, headers, body


async def _both(
    hot: AsyncTestClient[Any], routed: AsyncTestClient[Any], path: str, **kwargs: Any
) -> tuple[int, dict[str, str], str]:
    first = _shape(await hot.post(path, **kwargs))
    second = _shape(await routed.post(path, **kwargs))
    assert first == second
    return first


async def test_issuance_answers_as_the_litestar_route(
    hot: AsyncTestClient[Any], routed: AsyncTestClient[Any], make_tenant: Any
) -> None:
    tenant = await make_tenant("hot-issue")
    form = {"grant_type": "client_credentials", **tenant.body}
    status, headers, body = await _both(hot, routed, "/oauth/token", data=form)
    assert status == 200
    assert headers["cache-control"] == "no-store"
    assert headers["content-type"] == "application/json"
    assert '"access_token":"pda-<token>"' in body
    assert '"request_id":"<request-id>"' in body
    json_body = {"grant_type": "client_credentials", "scope": "user:read", **tenant.body}
    status, _, body = await _both(hot, routed, "/oauth/token", json=json_body)
    assert status == 200
    assert '"scope":"user:read"' in body


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        ("wrong secret", {"data": {"grant_type": "client_credentials", "client_id": "nobody", "secret": "x"}}),
        ("no credentials", {"data": {"grant_type": "client_credentials"}}),
        ("unknown grant", {"data": {"grant_type": "password", "client_id": "a", "secret": "b"}}),
        ("repeated parameter", {"content": b"grant_type=a&grant_type=b", "headers": FORM}),
        ("bad form", {"content": b"%zz=&&", "headers": FORM}),
        ("not JSON", {"content": b"{", "headers": {"content-type": "application/json"}}),
        ("JSON array", {"content": b"[1]", "headers": {"content-type": "application/json"}}),
        ("content type", {"content": b"a=b", "headers": {"content-type": "text/plain"}}),
        ("too large", {"content": b"a=" + b"x" * (70 * 1024), "headers": FORM}),
        ("bad content length", {"content": b"a=b", "headers": {**FORM, "content-length": "x"}}),
        ("basic and body", {"data": {"grant_type": "client_credentials", "client_id": "a"}, "headers": BASIC}),
        ("bad basic", {"data": {"grant_type": "client_credentials"}, "headers": {"authorization": "Basic !!!"}}),
    ],
)  # fmt: skip
async def test_refusals_answer_as_the_litestar_route(
    hot: AsyncTestClient[Any], routed: AsyncTestClient[Any], case: str, kwargs: dict[str, Any]
) -> None:
    for path in ("/oauth/token", "/oauth/introspect"):
        status, headers, body = await _both(hot, routed, path, **kwargs)
        assert status >= 400, case
        assert '"error":' in body
        assert '"request_id":"<request-id>"' in body
        assert headers["cache-control"] == "no-store"


async def test_introspection_answers_as_the_litestar_route(
    hot: AsyncTestClient[Any], routed: AsyncTestClient[Any], make_tenant: Any
) -> None:
    tenant = await make_tenant("hot-introspect")
    issued = (await hot.post("/oauth/token", data={"grant_type": "client_credentials", **tenant.body})).json()
    for token in (issued["access_token"], issued["refresh_token"], "pda-not-a-token-at-all"):
        status, _, body = await _both(hot, routed, "/oauth/introspect", data={"token": token, **tenant.body})
        assert status == 200
        assert body.startswith('{"active":true' if token != "pda-not-a-token-at-all" else '{"active":false')


async def test_hot_endpoints_do_not_go_through_the_router(settings: Settings, make_tenant: Any) -> None:
    """With Litestar's router broken, the hot endpoints still answer; everything else fails."""
    app = create_app(settings)
    tenant = await make_tenant("hot-bypass")

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("the router was used")

    async with AsyncTestClient(app=app, base_url="http://broker.test") as client:
        app.asgi_handler = broken
        issued = await client.post("/oauth/token", data={"grant_type": "client_credentials", **tenant.body})
        assert issued.status_code == 200, issued.text
        assert issued.headers["x-request-id"] == issued.json()["request_id"]
        token = issued.json()["access_token"]
        introspected = await client.post("/oauth/introspect", data={"token": token, **tenant.body})
        assert introspected.json()["active"] is True
        with pytest.raises(RuntimeError, match="the router was used"):
            await client.post("/oauth/revoke", data={"token": "x", **tenant.body})
        with pytest.raises(RuntimeError, match="the router was used"):
            await client.get("/oauth/token")  # other methods are Litestar's (405)


async def test_other_methods_and_paths_are_litestars(hot: AsyncTestClient[Any], routed: AsyncTestClient[Any]) -> None:
    for method, path in (("GET", "/oauth/token"), ("PUT", "/oauth/introspect"), ("POST", "/oauth/token/extra")):
        first = _shape(await hot.request(method, path))
        second = _shape(await routed.request(method, path))
        assert first == second
        assert first[0] in {404, 405}
