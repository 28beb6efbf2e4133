"""Gateway tests: a second broker in issuer mode as the real upstream, a fault-injecting proxy, and mirrored worlds.

The upstream is ``broker serve`` (granian) in a subprocess with its own database and its own keys. The
proxy sits between the gateway and the upstream (a thread in the test process) so a test can make the
upstream slow, failing, resetting connections or answering garbage, and count what reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from sqlalchemy import select

from broker.app import build_runtime
from broker.context import Runtime
from broker.crypto.keyring import generate_key
from broker.db import migrate
from broker.db.models import UpstreamGrant
from broker.gateway import upstreams
from broker.gateway.held import upstream_token_aad
from broker.keys import sealing
from broker.settings import Settings
from broker.tenants import service as tenants
from tests import dbsetup
from tests.conftest import Client, serve
from tests.oauth_helpers import add_member, allow, new_audience

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
MULTI = "urn:plaid:params:credit:multi-user"
OAUTH_USER = "urn:plaid:params:oauth:user-token"
USER = "urn:plaid:params:tokens:user"


@dataclass
class UpstreamBroker:
    """The upstream: its URL, and a runtime on its database to provision it (as its operator would)."""

    url: str
    runtime: Runtime

    async def tenant(self, name: str, **spec: Any) -> Client:
        async with self.runtime.sessions() as session, session.begin():
            tenant, secret = await tenants.create_tenant(
                session, self.runtime.ring, tenants.TenantSpec(name=name, **spec), actor="test", request_id=None
            )
        return Client(tenant.client_id, secret, tenant.id)

    async def post(self, path: str, creds: Client, **body: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
            return await http.post(path, json=body, headers=creds.headers)

    async def introspect(self, creds: Client, token: str) -> dict[str, Any]:
        response = await self.post("/oauth/introspect", creds, token=token)
        assert response.status_code == 200, response.text
        return response.json()


@contextlib.asynccontextmanager
async def upstream_broker() -> AsyncIterator[UpstreamBroker]:
    """A second broker in issuer mode on its own port and database."""
    url = await asyncio.to_thread(dbsetup.create_database, os.environ["BROKER_DATABASE_URL"], "broker_upstream")
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        env = {
            "BROKER_DATABASE_URL": url,
            "BROKER_KEYS": f"up-1:{generate_key()}",
            "BROKER_HASH_KEY": generate_key(),
            "BROKER_WORKERS": "1",
            # The suite shares one PostgreSQL (max_connections 100) among many servers: keep this one small.
            "BROKER_DB_POOL_SIZE": "2",
            "BROKER_DB_MAX_OVERFLOW": "4",
        }
        settings = Settings(
            database_url=url,
            keys=env["BROKER_KEYS"],
            hash_key=env["BROKER_HASH_KEY"],
            db_pool_size=2,
            db_max_overflow=2,
        )
        runtime = build_runtime(settings)
        try:
            with serve(env) as server:  # started once per module
                yield UpstreamBroker(server.url, runtime)
        finally:
            await runtime.close()
    finally:
        await asyncio.to_thread(dbsetup.drop_database, url)


@dataclass
class Proxy:
    """A fault-injecting HTTP proxy in front of the upstream.

    ``mode``: ``pass`` (forward), ``reset`` (close the connection with a TCP reset, nothing answered),
    ``error`` (answer 500), ``garbage`` (answer 200 with a body that is not JSON), ``slow`` (wait
    ``delay`` seconds, then forward). ``fail_next`` makes only the next N requests fail in ``mode``.
    """

    target: str
    mode: str = "pass"
    delay: float = 2.0
    fail_next: int | None = None
    hits: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def count(self, path: str | None = None) -> int:
        return sum(1 for hit in self.hits if path is None or hit == path)

    def _mode(self) -> str:
        if self.fail_next is None:
            return self.mode
        if self.fail_next <= 0:
            return "pass"
        self.fail_next -= 1
        return self.mode

    def start(self) -> Proxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                proxy.hits.append(self.path)
                mode = proxy._mode()
                if mode == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if mode == "error":
                    self._answer(500, b'{"error": "server_error"}')
                    return
                if mode == "garbage":
                    self._answer(200, b"<html>not json</html>")
                    return
                if mode == "slow":
                    time.sleep(proxy.delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length"}}
                upstream = httpx.post(proxy.target + self.path, content=body, headers=headers, timeout=30)
                self._answer(upstream.status_code, upstream.content)

            def _answer(self, status: int, content: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                except OSError:
                    pass  # the gateway gave up (timeout) and closed the connection

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@contextlib.contextmanager
def proxy_to(target: str) -> Iterator[Proxy]:
    proxy = Proxy(target).start()
    try:
        yield proxy
    finally:
        proxy.close()


@dataclass
class Pair:
    """A client on both sides: its broker credentials (``local``) and its identity at the upstream."""

    local: Client
    upstream: Client


@dataclass
class GatewayWorld:
    """A lender, two CRA partners behind two URNs and a second client, on both sides, and a user upstream."""

    lender: Pair
    other: Pair
    partner_a: Pair
    partner_b: Pair
    urn_a: str
    urn_b: str
    user_id: str = ""


async def set_upstream(runtime: Runtime, local: Client, upstream: Client, base_url: str, mode: str) -> None:
    async with runtime.sessions() as session, session.begin():
        await upstreams.set_upstream(
            session,
            runtime.ring,
            runtime.settings,
            local.client_id,
            upstreams.UpstreamSpec(base_url=base_url, client_id=upstream.client_id, secret=upstream.secret, mode=mode),
            actor="test",
            request_id=None,
        )


async def build_gateway_world(
    client: Any, runtime: Runtime, make_tenant: Any, up: UpstreamBroker, base_url: str, *, mode: str = "held"
) -> GatewayWorld:
    """Mirror a lender-partner world: the same policies at the upstream and at the gateway."""
    tag = secrets.token_hex(4)
    urn_a, urn_b = f"urn:test:cra-partner:a{tag}", f"urn:test:cra-partner:b{tag}"
    pairs = []
    for name, kind in (
        ("lender", "customer"),
        ("other", "customer"),
        ("partner a", "partner"),
        ("partner b", "partner"),
    ):
        upstream_client = await up.tenant(f"{name} upstream", kind=kind)
        local = await make_tenant(f"{name} gateway", kind=kind)
        await set_upstream(runtime, local, upstream_client, base_url, mode)
        pairs.append(Pair(local, upstream_client))
    lender, other, partner_a, partner_b = pairs
    for sessions, side in ((up.runtime.sessions, "upstream"), (runtime.sessions, "local")):
        for urn, partner in ((urn_a, partner_a), (urn_b, partner_b)):
            await new_audience(sessions, urn)
            await add_member(sessions, urn, getattr(partner, side).tenant_id)
            await allow(sessions, getattr(lender, side).tenant_id, urn=urn)
        await allow(sessions, getattr(lender, side).tenant_id, target_tenant_id=getattr(other, side).tenant_id)
    world = GatewayWorld(lender, other, partner_a, partner_b, urn_a, urn_b)
    response = await client.post("/user/create", json={"client_user_id": f"cu-{tag}"}, headers=lender.local.headers)
    assert response.status_code == 200, response.text
    world.user_id = response.json()["user_id"]
    return world


async def held_upstream_tokens(runtime: Runtime) -> set[str]:
    """Every upstream refresh token the gateway holds (opened), to check none ever reached a caller."""
    async with runtime.sessions() as session:
        rows = list((await session.execute(select(UpstreamGrant))).scalars())
        return {
            (
                await sealing.open_(session, runtime.ring, row.token_enc, upstream_token_aad(row.tenant_id, row.id))
            ).decode()
            for row in rows
        }


def new_id() -> str:
    return uuid.uuid4().hex
