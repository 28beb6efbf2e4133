"""Ring key rotation, online re-encryption and retirement, on a scratch database with live replicas.

Each test has its own database (the key ring changes under it) and follows the operator's procedure
in docs/operations.md: stage the new key on every replica, activate it, re-encrypt, retire the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select

from broker import errors
from broker.app import create_app
from broker.crypto import envelope
from broker.crypto.keyring import generate_key
from broker.db import migrate
from broker.db.models import RefreshToken, User, WebhookEndpoint
from broker.http.auth import Credentials
from broker.keys import reencrypt
from broker.keys import service as keys
from broker.oauth import service as oauth
from broker.settings import Settings
from broker.tenants import clients
from broker.tenants import service as tenants
from broker.users import service as users
from broker.webhooks import outbox
from broker.webhooks import service as webhooks
from tests import dbsetup
from tests.conftest import Client, serve
from tests.keys_helpers import HASH_KEY, cli, count, make_legacy, open_everything, popen, ring_env, runtime_for, v1_rows

K1, K2 = generate_key(), generate_key()
R1 = f"k1:{K1}"  # before: k1 only
R_STAGED = f"k1:{K1},k2:{K2}"  # k2 staged everywhere, k1 still active
R_ACTIVE = f"k2:{K2},k1:{K1}"  # k2 active, k1 kept for decryption
R2 = f"k2:{K2}"  # after: k1 retired
PACE = 0.2  # seconds between two issuances (or two new users) of one worker; refresh chains run flat out
IDENTITY = {"name": {"given_name": "Grace", "family_name": "Hopper"}, "date_of_birth": "1906-12-09"}


@pytest.fixture
def scratch() -> Iterator[str]:
    url = dbsetup.create_database(os.environ["BROKER_DATABASE_URL"], prefix="broker_keys")
    migrate.upgrade(url)
    try:
        yield url
    finally:
        dbsetup.drop_database(url)


async def _tenant(runtime, name: str) -> Client:
    async with runtime.sessions() as session, session.begin():
        tenant, secret = await tenants.create_tenant(
            session, runtime.ring, tenants.TenantSpec(name=name), actor="test", request_id=None
        )
    return Client(tenant.client_id, secret, tenant.id)


@dataclass
class Load:
    """Token traffic spread over replicas; every answer is checked, every token kept for a final check."""

    replicas: list[httpx.AsyncClient]
    lenders: list[Client] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    chains: dict[str, tuple[Client, str]] = field(default_factory=dict)
    unused: list[tuple[Client, str]] = field(default_factory=list)
    users: list[tuple[Client, str, str, str]] = field(default_factory=list)
    requests: int = 0
    inflight: dict[int, int] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def add(self, lender: Client) -> None:
        """Start a refresh chain, an issuer and a user creator for ``lender``."""
        self.lenders.append(lender)
        for work in (self.chain(lender), self.issue(lender), self.people(lender)):
            self.tasks.append(asyncio.create_task(work))

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    async def leave(self, replica: httpx.AsyncClient) -> None:
        """Take a replica out of rotation and let its requests finish (a load balancer draining it)."""
        self.replicas.remove(replica)
        while self.inflight.get(id(replica), 0):  # noqa: ASYNC110 - polling a counter, for a test
            await asyncio.sleep(0.01)

    async def post(self, path: str, creds: Client, body: dict[str, Any]) -> dict[str, Any]:
        replica = random.choice(self.replicas)
        self.inflight[id(replica)] = self.inflight.get(id(replica), 0) + 1
        try:
            response = await replica.post(path, json=body, headers=creds.headers)
        finally:
            self.inflight[id(replica)] -= 1
        self.requests += 1
        if response.status_code != 200:
            self.failures.append(f"{path} via {replica.base_url}: {response.status_code} {response.text}")
            return {}
        result: dict[str, Any] = response.json()
        return result

    async def chain(self, creds: Client) -> None:
        current = await self.post("/oauth/token", creds, {"grant_type": "client_credentials"})
        n = 0
        while not self.stop.is_set() and current:
            body = {"grant_type": "refresh_token", "refresh_token": current["refresh_token"]}
            new = await self.post("/oauth/token", creds, body)
            if new and n % 3 == 0:  # a lost response: the retry must give back the same pair (sealed retry pair)
                retry = await self.post("/oauth/token", creds, body)
                if retry and retry["refresh_token"] != new["refresh_token"]:
                    self.failures.append("a retry within the grace window got a different pair")
            current, n = new, n + 1
            self.chains[creds.client_id] = (creds, current.get("refresh_token", ""))

    async def issue(self, creds: Client) -> None:
        while not self.stop.is_set():
            body = await self.post("/oauth/token", creds, {"grant_type": "client_credentials"})
            if body:
                self.unused.append((creds, body["refresh_token"]))
            await asyncio.sleep(PACE)

    async def people(self, creds: Client) -> None:
        while not self.stop.is_set():
            client_user_id = f"cu-{random.getrandbits(48):x}"
            made = await self.post("/user/create", creds, {"client_user_id": client_user_id, "identity": IDENTITY})
            if made:
                self.users.append((creds, client_user_id, made["user_id"], made["user_token"]))
                got = await self.post("/user/get", creds, {"user_id": made["user_id"]})
                if got and got.get("identity") != IDENTITY:
                    self.failures.append("identity did not round-trip")
            await asyncio.sleep(PACE)


@contextlib.asynccontextmanager
async def in_process(url: str, keys: str) -> AsyncIterator[httpx.AsyncClient]:
    """A replica inside this process: its own app, runtime, pool and data key cache."""
    app = create_app(Settings(database_url=url, keys=keys, hash_key=HASH_KEY))
    async with AsyncTestClient(app=app, base_url="http://replica.test", timeout=30) as replica:
        yield replica


@contextlib.asynccontextmanager
async def live(url: str, keys: str) -> AsyncIterator[httpx.AsyncClient]:
    """A replica served by ``broker serve`` (granian) in a subprocess."""
    with serve(ring_env(url, keys)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as replica:
            yield replica


async def _verify_all(http: httpx.AsyncClient, load: Load, legacy: list[tuple[Client, str]], users: list[Any]) -> None:
    """Every token issued before, during and after still works; every user still reads back."""
    refreshes = [*legacy, *load.unused, *load.chains.values()]
    gate = asyncio.Semaphore(8)

    async def refresh(creds: Client, refresh_token: str) -> None:
        async with gate:
            body = {"grant_type": "refresh_token", "refresh_token": refresh_token}
            response = await http.post("/oauth/token", json=body, headers=creds.headers)
        assert response.status_code == 200, response.text

    async def reread(creds: Client, client_user_id: str, user_id: str, user_token: str) -> None:
        async with gate:
            got = await http.post("/user/get", json={"user_token": user_token}, headers=creds.headers)
            again = await http.post("/user/create", json={"client_user_id": client_user_id}, headers=creds.headers)
        assert got.status_code == 200, got.text
        assert got.json()["user_id"] == user_id
        assert got.json()["identity"] == IDENTITY  # the sealed identity decrypts
        assert again.json()["user_token"] == user_token  # and so does the sealed user token

    await asyncio.gather(*(refresh(c, t) for c, t in refreshes), *(reread(*user) for user in [*users, *load.users]))


async def _seed(runtime, lenders: list[Client]) -> tuple[list[tuple[Client, str]], list[tuple[Client, str, str, str]]]:
    """Tokens and users written before the rotation (through the services, as a replica would)."""
    issued: list[tuple[Client, str]] = []
    people: list[tuple[Client, str, str, str]] = []
    for lender in lenders:
        tenant = await clients.authenticate(runtime, Credentials(lender.client_id, lender.secret))
        for i in range(4):
            pair = await oauth.issue_token(runtime, tenant, {"grant_type": ["client_credentials"]}, f"s{i}")
            issued.append((lender, pair.refresh_token))
        for i in range(2):
            async with runtime.sessions() as session:
                made = await users.create_user(
                    session,
                    runtime.ring,
                    tenant_id=tenant.id,
                    client_user_id=f"seed-{i}",
                    token_env="sandbox",
                    identity=IDENTITY,
                    actor="test",
                    request_id=None,
                )
            people.append((lender, f"seed-{i}", made.user_id, made.user_token))
    return issued, people


async def test_rotation_and_reencryption_under_load_on_two_replicas(scratch):
    seed = runtime_for(scratch, R1)
    lenders = [await _tenant(seed, f"lender {i}") for i in range(3)]
    legacy_tokens, seeded_users = await _seed(seed, lenders)
    # rows written before tenant data keys existed: v1 under k1; the first lender has no data key at all
    assert await make_legacy(seed, lenders[0].tenant_id, drop_data_key=True) > 0
    assert await make_legacy(seed, lenders[1].tenant_id, drop_data_key=False) > 0
    async with seed.sessions() as session, session.begin():  # a partner's webhook secret, sealed under k1
        _, signing_secret = await webhooks.create_endpoint(
            session,
            seed.ring,
            seed.settings,
            webhooks.EndpointSpec(url="http://127.0.0.1:9/hook"),
            client_id=lenders[2].client_id,
            audience=None,
            actor="test",
            request_id=None,
        )
    await seed.close()
    ops, other_replica = runtime_for(scratch, R_ACTIVE), runtime_for(scratch, R_ACTIVE)
    async with contextlib.AsyncExitStack() as replicas:
        old_replica = await replicas.enter_async_context(contextlib.AsyncExitStack())
        old = await old_replica.enter_async_context(in_process(scratch, R1))
        # 1. stage k2 (rolling): a live replica with k2 staged serves beside the old one
        staged = await replicas.enter_async_context(live(scratch, R_STAGED))
        load = Load(replicas=[old, staged])
        for lender in lenders:
            load.add(lender)
        await asyncio.sleep(0.5)
        await load.leave(old)  # the old replica leaves before any replica activates k2
        await old_replica.aclose()

        # 2. activate k2 (rolling): the new replica seals new data keys under k2, the staged one reads them
        active = await replicas.enter_async_context(live(scratch, R_ACTIVE))
        load.replicas.append(active)
        load.add(await _tenant(ops, "created mid-rotation"))
        await asyncio.sleep(0.5)
        async with ops.sessions() as session, session.begin():
            before = await keys.status(session, ops.ring)
        assert before.active == "k2"
        assert before.data_keys.get("k1", 0) >= 2
        assert before.data_keys.get("k2", 0) >= 1
        assert before.rows_by_key().get("k1", 0) > 0
        assert before.columns["webhook_endpoints.secrets"].direct == {"k1": 1}
        async with ops.sessions() as session:
            with pytest.raises(errors.Conflict, match="is still needed by"):
                await keys.check_retire(session, ops.ring, "k1")

        # 3. re-encrypt from two processes' worth of runtimes at once, beside the traffic
        async with ops.sessions() as one, other_replica.sessions() as two:
            runs = await asyncio.gather(
                reencrypt.reencrypt(one, ops.ring, batch_size=2, pause=0.01),
                reencrypt.reencrypt(two, other_replica.ring, batch_size=2, pause=0.01),
            )
        await asyncio.sleep(0.3)
        await load.finish()
    await other_replica.close()
    assert not load.failures, load.failures[:5]
    assert load.requests > 50
    assert sum(r.data_keys for r in runs) >= len(lenders)  # each rewrapped once, by either run
    assert sum(r.rows for r in runs) >= len(legacy_tokens) // 3
    assert [r.unreadable for r in runs] == [[], []]

    # 4. everything is under k2 now, so k1 may go
    try:
        async with ops.sessions() as session, session.begin():
            after = await keys.status(session, ops.ring)
        assert after.pending() == 0
        assert set(after.data_keys) == {"k2"}
        assert set(after.rows_by_key()) == {"k2"}
        assert after.columns["webhook_endpoints.secrets"].direct == {"k2": 1}  # resealed in place
        assert all(
            not usage.direct for name, usage in after.columns.items() if name.split(".")[0] != "webhook_endpoints"
        )
        async with ops.sessions() as session:
            await keys.check_retire(session, ops.ring, "k1")
    finally:
        await ops.close()
    final = runtime_for(scratch, R2)
    try:
        opened = await open_everything(final)  # every sealed value opens with k2 alone
        assert opened["refresh_tokens.token_enc"] == await count(final, RefreshToken)
        assert opened["users.user_token_enc"] == await count(final, User)
        assert sum(after.rows_by_key().values()) == sum(opened.values()) + 1  # and the webhook secret
        async with final.sessions() as session:
            endpoint = (await session.execute(select(WebhookEndpoint))).scalar_one()
        aad = outbox.endpoint_secret_aad(lenders[2].tenant_id, endpoint.id)
        assert envelope.open_(final.ring, endpoint.secret_enc, aad).decode() == signing_secret
    finally:
        await final.close()
    async with in_process(scratch, R2) as retired:  # starts only if nothing needs k1 any more
        await _verify_all(retired, load, legacy_tokens, seeded_users)


async def _seed_legacy_rows(url: str, keys: str, n: int) -> Client:
    runtime = runtime_for(url, keys)
    try:
        lender = await _tenant(runtime, "legacy lender")
        tenant = await clients.authenticate(runtime, Credentials(lender.client_id, lender.secret))
        for i in range(n):
            await oauth.issue_token(runtime, tenant, {"grant_type": ["client_credentials"]}, f"seed-{i}")
        await make_legacy(runtime, lender.tenant_id, drop_data_key=False)
        return lender
    finally:
        await runtime.close()


async def test_reencryption_killed_half_way_resumes_and_completes(scratch):
    rows = 150
    lender = await _seed_legacy_rows(scratch, R1, rows)
    probe = runtime_for(scratch, R_ACTIVE)
    try:
        assert await v1_rows(probe) == rows
        run = popen(ring_env(scratch, R_ACTIVE), "keys", "reencrypt", "--batch-size", "10", "--pause", "0.1")
        deadline = time.monotonic() + 60
        while await v1_rows(probe) > rows - 30:
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=30)
        left = await v1_rows(probe)
        assert 0 < left < rows  # killed half-way: some rows moved, some not, none broken
        assert sum((await open_everything(probe)).values()) == rows

        # a ring without k1 is refused while rows still need it: no replica starts with it
        refused = cli(ring_env(scratch, R2), "serve", "--no-migrate", check=False, timeout=60)
        assert refused.returncode == 1
        assert "k1" in refused.stderr
        assert "still needed" in refused.stderr

        # run it again: it picks up where the killed run stopped
        resumed = json.loads(cli(ring_env(scratch, R_ACTIVE), "keys", "reencrypt", "--json").stdout)
        assert resumed["rows"] == left
        assert resumed["unreadable"] == []
        assert await v1_rows(probe) == 0
    finally:
        await probe.close()
    final = runtime_for(scratch, R2)
    try:
        assert (await open_everything(final))["refresh_tokens.token_enc"] == rows
    finally:
        await final.close()
    retired = cli(ring_env(scratch, R_ACTIVE), "keys", "retire", "k1")
    assert "BROKER_KEYS=k2:" in retired.stdout
    assert "k1:" not in retired.stdout
    del lender


async def test_pending_counts_and_rewrap_in_process(scratch):
    """The library entry point: data keys are rewrapped, not rows; counts move from k1 to k2."""
    runtime = runtime_for(scratch, R1)
    try:
        lenders = [await _tenant(runtime, f"t{i}") for i in range(3)]
        tenant = await clients.authenticate(runtime, Credentials(lenders[0].client_id, lenders[0].secret))
        await oauth.issue_token(runtime, tenant, {"grant_type": ["client_credentials"]}, "r")
    finally:
        await runtime.close()
    rotated = runtime_for(scratch, R_ACTIVE)
    try:
        async with rotated.sessions() as session:
            assert await reencrypt.pending(session, rotated.ring) == 3
        ticks: list[int] = []
        async with rotated.sessions() as session:
            result = await reencrypt.reencrypt(session, rotated.ring, batch_size=2, progress=ticks.append)
        assert (result.data_keys, result.rows) == (3, 0)
        assert sum(ticks) == 3
        async with rotated.sessions() as session:
            assert await reencrypt.pending(session, rotated.ring) == 0
    finally:
        await rotated.close()
