"""Scale-out (``make test-scale``): a streaming read replica serving introspection and admin reads with
read-your-writes for new tokens, and the suite's traffic really going through PgBouncer.

The replica test starts its own primary and hot standby (``pg_basebackup -R``); it runs when
``BROKER_TEST_SCALE`` is set. The PgBouncer check runs when the suite itself goes through PgBouncer
(``BROKER_TEST_PGBOUNCER``, see ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess

import asyncpg
import httpx
import pytest

from broker.app import build_runtime
from broker.db import migrate
from broker.tenants import service as tenants
from tests.admin_helpers import issue_key
from tests.conftest import Client
from tests.fault_helpers import Server, _bin_dir
from tests.oauth_helpers import EXCHANGE, MULTI, add_member, allow, create_user, new_audience
from tests.scale_helpers import replicated_postgres, wait_replayed


def _reads(text: str, source: str) -> float:
    match = re.search(rf'^broker_introspection_reads_total\{{source="{source}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _tenant(runtime, name: str, kind: str | None = None) -> Client:
    async with runtime.sessions() as session, session.begin():
        tenant, secret = await tenants.create_tenant(
            session, runtime.ring, tenants.TenantSpec(name=name, kind=kind), actor="test", request_id=None
        )
    return Client(tenant.client_id, secret, tenant.id)


@pytest.mark.skipif(not os.environ.get("BROKER_TEST_SCALE"), reason="make test-scale (starts a primary and a standby)")
@pytest.mark.timeout(300)
async def test_a_read_replica_serves_introspection_with_read_your_writes(settings):
    with replicated_postgres() as (primary, standby):
        await asyncio.to_thread(migrate.upgrade, primary.url)
        runtime = build_runtime(settings.model_copy(update={"database_url": primary.url}))
        try:
            lender = await _tenant(runtime, "replica lender")
            partner = await _tenant(runtime, "replica partner", "partner")
            _, admin_key = await issue_key(runtime, "read")
            urn = await new_audience(runtime.sessions)
            await add_member(runtime.sessions, urn, partner.tenant_id)
            await allow(runtime.sessions, lender.tenant_id, urn=urn)
        finally:
            await runtime.close()
        await wait_replayed(primary.url, standby.url)
        server = Server(
            {"BROKER_DATABASE_URL": primary.url, "BROKER_DATABASE_READ_URL": standby.url, "BROKER_WORKERS": "1"}
        )
        await asyncio.to_thread(server.start)
        control = await asyncpg.connect(standby.url)
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:

                async def introspect(creds: Client, token: str) -> bool:
                    response = await http.post("/oauth/introspect", json={"token": token}, headers=creds.headers)
                    assert response.status_code == 200, response.text
                    return bool(response.json()["active"])

                async def reads() -> tuple[float, float]:
                    text = (await http.get("/metrics")).text
                    return _reads(text, "replica"), _reads(text, "primary")

                ready = (await http.get("/readyz")).json()
                assert ready["replica"] == "ok", ready

                # 1. caught up: the replica answers the owner, nothing reaches the primary
                first = (
                    await http.post("/oauth/token", json={"grant_type": "client_credentials"}, headers=lender.headers)
                ).json()
                await wait_replayed(primary.url, standby.url)
                before = await reads()
                assert await introspect(lender, first["access_token"])
                after = await reads()
                assert (after[0] - before[0], after[1] - before[1]) == (1, 0)

                # 2. replay paused: a token just issued is not on the replica, yet introspects as active
                await control.execute("SELECT pg_wal_replay_pause()")
                fresh = (
                    await http.post("/oauth/token", json={"grant_type": "client_credentials"}, headers=lender.headers)
                ).json()
                before = await reads()
                assert await introspect(lender, fresh["access_token"])
                assert await introspect(lender, fresh["refresh_token"])
                after = await reads()
                assert (after[0] - before[0], after[1] - before[1]) == (0, 2)

                # 3. the documented rule: a revocation reaches the replica's answers after the replication
                # lag; here replay is paused, so the owner still sees the old token as active
                revoked = await http.post(
                    "/oauth/revoke", json={"token": first["refresh_token"]}, headers=lender.headers
                )
                assert revoked.status_code == 200
                assert await introspect(lender, first["access_token"]) is True
                # a party (not the owner) always asks the primary, which audits the introspection
                user = await create_user(http, lender)
                shared = (
                    await http.post(
                        "/oauth/token",
                        json={
                            "grant_type": EXCHANGE,
                            "subject_token": user["user_id"],
                            "subject_token_type": MULTI,
                            "audience": urn,
                        },
                        headers=lender.headers,
                    )
                ).json()
                assert await introspect(partner, shared["access_token"])

                # 4. admin reads come from the replica: a tenant created during the pause is not listed yet
                created = await http.post(
                    "/admin/v1/tenants",
                    json={"name": "made during the pause"},
                    headers={"Authorization": f"Bearer {await _write_key(primary.url, settings)}"},
                )
                assert created.status_code == 201, created.text
                new_id = created.json()["client_id"]
                listed = await http.get(f"/admin/v1/tenants/{new_id}", headers={"Authorization": f"Bearer {admin_key}"})
                assert listed.status_code == 404

                # 5. replay resumed: the replica catches up and agrees with the primary
                await control.execute("SELECT pg_wal_replay_resume()")
                await wait_replayed(primary.url, standby.url)
                assert await introspect(lender, first["access_token"]) is False
                listed = await http.get(f"/admin/v1/tenants/{new_id}", headers={"Authorization": f"Bearer {admin_key}"})
                assert listed.status_code == 200, listed.text

                # 6. the replica stops: introspection and readiness carry on from the primary
                await asyncio.to_thread(standby.stop, "immediate")
                assert await introspect(lender, fresh["access_token"])
                ready = await http.get("/readyz")
                assert ready.status_code == 200
                assert ready.json()["replica"].startswith("unavailable")
        finally:
            await control.close()
            await asyncio.to_thread(server.stop)


async def _write_key(primary_url: str, settings) -> str:
    runtime = build_runtime(settings.model_copy(update={"database_url": primary_url}))
    try:
        return (await issue_key(runtime, "write"))[1]
    finally:
        await runtime.close()


@pytest.mark.skipif(not os.environ.get("BROKER_TEST_PGBOUNCER"), reason="make test-scale (the suite through PgBouncer)")
async def test_the_suite_goes_through_pgbouncer_in_transaction_mode(client, make_tenant):
    lender = await make_tenant("bounced lender")
    for _ in range(3):
        response = await client.post("/oauth/token", json={"grant_type": "client_credentials"}, headers=lender.headers)
        assert response.status_code == 200
    url = os.environ["BROKER_DATABASE_URL"]
    port = url.rsplit(":", 1)[1].split("/", 1)[0]

    def show(what: str) -> str:
        done = subprocess.run(
            [
                str(_bin_dir() / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-U",
                "postgres",
                "-At",
                "-c",
                f"SHOW {what}",
                "pgbouncer",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout

    assert "pool_mode|transaction" in show("CONFIG")
    database = url.rsplit("/", 1)[1]
    stats = [line.split("|") for line in show("STATS").splitlines() if line.startswith(database + "|")]
    assert stats, "PgBouncer served nothing for the test database"
    assert int(stats[0][1]) > 0  # total_xact_count
