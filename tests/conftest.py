"""Shared fixtures: one migrated PostgreSQL database per test run, the app, and a live server.

Tests isolate themselves by creating their own tenants (random client ids), so they never depend on
each other's rows and need no cleanup between tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import hypothesis
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.app import build_runtime, create_app
from broker.context import Runtime
from broker.crypto.keyring import generate_key
from broker.db import migrate
from broker.settings import Settings
from broker.tenants import service as tenants
from tests import dbsetup

_STATE: dict[str, Any] = {}

# Property tests are derandomized (same examples every run) so CI stays deterministic; set
# HYPOTHESIS_PROFILE=explore locally to search with fresh random examples.
hypothesis.settings.register_profile("ci", derandomize=True, database=None, max_examples=200)
hypothesis.settings.register_profile("explore", max_examples=2000)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    server, handle = dbsetup.server_url()
    url = dbsetup.create_database(server)
    _STATE.update(url=url, handle=handle)
    migrate.upgrade(url)  # always direct: the migration's session advisory lock needs a session
    served = url
    if os.environ.get("BROKER_TEST_PGBOUNCER"):  # make test-scale: the app under test goes through PgBouncer
        from tests.scale_helpers import PgBouncer  # noqa: PLC0415

        bouncer = PgBouncer(url, pool_size=30)
        bouncer.start()
        _STATE["bouncer"] = bouncer
        served = bouncer.url(dbsetup.database_of(url))
        os.environ["BROKER_DATABASE_POOLER"] = "pgbouncer"
    os.environ.update(
        BROKER_ENV="test",
        BROKER_DATABASE_URL=served,
        BROKER_KEYS=f"test-2:{generate_key()},test-1:{generate_key()}",
        BROKER_HASH_KEY=generate_key(),
        BROKER_LOG_LEVEL="INFO",
        BROKER_LOG_JSON="true",
        # Tests drive webhook delivery themselves (tests/webhook_helpers.py); servers opt in with serve(env).
        BROKER_WEBHOOK_WORKER="false",
        # Likewise the gateway's upstream call worker (tests/test_gateway_outage.py drives it).
        BROKER_UPSTREAM_WORKER="false",
        # Small pools: the suite runs many apps and servers at once against one PostgreSQL, whose
        # max_connections (100 by default) every pool of every worker shares.
        BROKER_DB_POOL_SIZE="4",
        BROKER_DB_MAX_OVERFLOW="2",
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    bouncer = _STATE.pop("bouncer", None)
    if bouncer is not None:
        bouncer.stop()
    url = _STATE.pop("url", None)
    if url and not os.environ.get("BROKER_KEEP_TEST_DATABASE"):
        dbsetup.drop_database(url)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_app(settings)
    async with AsyncTestClient(app=app, base_url="http://broker.test") as test_client:
        yield test_client


@pytest.fixture(scope="session")
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """The tests' own runtime (same settings and keys as the app). The test client runs the app on
    another event loop, so tests must never borrow the app's engine."""
    value = build_runtime(settings)
    try:
        yield value
    finally:
        await value.close()


@pytest.fixture(scope="session")
def sessions(runtime: Runtime) -> async_sessionmaker[AsyncSession]:
    return runtime.sessions


@dataclass(frozen=True)
class Client:
    """A tenant's credentials, as a caller holds them."""

    client_id: str
    secret: str
    tenant_id: uuid.UUID

    @property
    def headers(self) -> dict[str, str]:
        return {"PLAID-CLIENT-ID": self.client_id, "PLAID-SECRET": self.secret}

    @property
    def body(self) -> dict[str, str]:
        return {"client_id": self.client_id, "secret": self.secret}


@pytest.fixture(scope="session")
def make_tenant(runtime: Runtime) -> Any:
    async def _make(name: str = "tenant", **spec: Any) -> Client:
        async with runtime.sessions() as session, session.begin():
            tenant, secret = await tenants.create_tenant(
                session,
                runtime.ring,
                tenants.TenantSpec(name=name, **spec),
                actor="test",
                request_id=None,
            )
        return Client(tenant.client_id, secret, tenant.id)

    return _make


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def serve(extra_env: dict[str, str] | None = None, output: Any = subprocess.DEVNULL) -> Iterator[LiveServer]:
    """Run ``broker serve`` (granian) in a subprocess on a free port until the block exits."""
    port = _free_port()
    env = {**os.environ, "BROKER_PORT": str(port), "BROKER_WORKERS": "2", **(extra_env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--no-migrate"], env=env, stdout=output, stderr=output
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("live server did not start")
        time.sleep(0.1)
    try:
        yield LiveServer(url=url, process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def live_server() -> Iterator[LiveServer]:
    """broker served by granian in a subprocess (two workers), as in production."""
    with serve() as server:
        yield server
