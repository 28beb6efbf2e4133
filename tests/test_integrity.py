"""``broker check`` finds every kind of corruption it names, and swapped ciphertexts fail closed.

Runs on a database of its own: the corruption made here must never reach the shared test database.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import select, text

from broker.app import build_runtime, create_app
from broker.crypto import tokens
from broker.db.models import RefreshToken
from broker.integrity import service
from broker.tenants import service as tenants
from tests.conftest import Client
from tests.fault_helpers import fresh_database
from tests.oauth_helpers import EXCHANGE, MULTI, add_member, allow, new_audience


@pytest.fixture(scope="module")
async def world(settings):
    async with fresh_database(os.environ["BROKER_DATABASE_URL"]) as url:
        own = settings.model_copy(update={"database_url": url, "refresh_grace_seconds": 300})
        runtime = build_runtime(own)
        made = []
        for name, kind in (("integrity lender", "customer"), ("integrity partner", "partner")):
            async with runtime.sessions() as session, session.begin():
                tenant, secret = await tenants.create_tenant(
                    session, runtime.ring, tenants.TenantSpec(name=name, kind=kind), actor="test", request_id=None
                )
            made.append(Client(tenant.client_id, secret, tenant.id))
        urn = await new_audience(runtime.sessions)
        await add_member(runtime.sessions, urn, made[1].tenant_id)
        await allow(runtime.sessions, made[0].tenant_id, urn=urn)
        async with AsyncTestClient(app=create_app(own), base_url="http://broker.test") as client:
            yield {"url": url, "runtime": runtime, "client": client, "lender": made[0], "partner": made[1], "urn": urn}
        await runtime.close()


async def _token(client, creds, **body):
    response = await client.post("/oauth/token", json=body, headers=creds.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def _user(client, creds, client_user_id, identity=None):
    body = {"client_user_id": client_user_id, **({"identity": identity} if identity else {})}
    response = await client.post("/user/create", json=body, headers=creds.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def _check(runtime) -> dict[str, int]:
    async with runtime.sessions() as session, session.begin():
        report = await service.check(session, runtime.ring)
    return {finding.rule: finding.count for finding in report.findings}


async def _sql(runtime, *statements: str, **params) -> None:
    async with runtime.sessions() as session, session.begin():
        for statement in statements:
            await session.execute(text(statement), params)


async def _swap(runtime, table: str, column: str, key: str, *, a, b) -> None:
    """Swap ``column`` between the rows whose ``key`` is ``a`` and ``b``."""
    await _sql(
        runtime,
        f"UPDATE {table} t SET {column} = o.{column} FROM {table} o "  # noqa: S608 - test constants
        f"WHERE (t.{key}, o.{key}) IN ((:a, :b), (:b, :a))",
        a=a,
        b=b,
    )


async def test_swapped_user_ciphertexts_fail_closed(world):
    client, lender, runtime = world["client"], world["lender"], world["runtime"]
    alice = await _user(client, lender, "alice", {"name": {"given_name": "Alice", "family_name": "A"}})
    bob = await _user(client, lender, "bob", {"name": {"given_name": "Bob", "family_name": "B"}})
    for column in ("user_token_enc", "identity_enc"):
        await _swap(runtime, "users", column, "user_id", a=alice["user_id"], b=bob["user_id"])
    assert {"unreadable_ciphertext:users.user_token_enc", "unreadable_ciphertext:users.identity_enc"} <= set(
        await _check(runtime)
    )
    # /user/get opens the identity: never Bob's data for Alice, never a 500
    got = await client.post("/user/get", json={"user_id": alice["user_id"]}, headers=lender.headers)
    assert got.status_code == 400, got.text
    assert got.json()["error_code"] == "USER_NOT_FOUND"
    assert "Bob" not in got.text
    # an idempotent /user/create opens the stored user token: never Bob's token for Alice
    again = await client.post("/user/create", json={"client_user_id": "alice"}, headers=lender.headers)
    assert again.status_code == 200, again.text
    assert again.json()["user_token"] not in {bob["user_token"], alice["user_token"]}
    assert again.json()["user_id"] != bob["user_id"]


async def test_swapped_retry_pairs_fail_closed(world):
    client, lender, runtime = world["client"], world["lender"], world["runtime"]
    first = await _token(client, lender, grant_type="client_credentials")
    second = await _token(client, lender, grant_type="client_credentials")
    new_first = await _token(client, lender, grant_type="refresh_token", refresh_token=first["refresh_token"])
    new_second = await _token(client, lender, grant_type="refresh_token", refresh_token=second["refresh_token"])
    ids = []
    async with runtime.sessions() as session:
        for pair in (first, second):
            digest = tokens.digest(runtime.ring.hash_key, pair["refresh_token"])
            ids.append(
                (await session.execute(select(RefreshToken.id).where(RefreshToken.digest == digest))).scalar_one()
            )
    await _swap(runtime, "refresh_tokens", "retry_pair_enc", "id", a=ids[0], b=ids[1])
    assert "unreadable_ciphertext:refresh_tokens.retry_pair_enc" in await _check(runtime)
    # a retry inside the grace window would open the retry pair: it fails closed as a replay
    for old, mine, other in ((first, new_first, new_second), (second, new_second, new_first)):
        response = await client.post(
            "/oauth/token",
            json={"grant_type": "refresh_token", "refresh_token": old["refresh_token"]},
            headers=lender.headers,
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_grant"
        assert other["access_token"] not in response.text
        assert mine["access_token"] not in response.text


async def test_broker_check_reports_each_kind_of_corruption(world):
    client, lender, partner, runtime = world["client"], world["lender"], world["partner"], world["runtime"]
    own = await _token(client, lender, grant_type="client_credentials")
    await _token(client, lender, grant_type="refresh_token", refresh_token=own["refresh_token"])
    user = await _user(client, lender, "carol")
    shared = await _token(
        client,
        lender,
        grant_type=EXCHANGE,
        subject_token=user["user_id"],
        subject_token_type=MULTI,
        audience=world["urn"],
    )
    await _token(client, partner, grant_type="refresh_token", refresh_token=shared["refresh_token"])
    before = await _check(runtime)
    await _sql(
        runtime,
        # a half-written grant: the row without its token pair
        """INSERT INTO grants (id, tenant_id, kind, requester_tenant_id, holder_tenant_id, path, scopes, audience,
                               access_token_ttl, refresh_token_ttl)
           SELECT gen_random_uuid(), tenant_id, kind, requester_tenant_id, holder_tenant_id, '{}', scopes, audience,
                  access_token_ttl, refresh_token_ttl FROM grants WHERE kind = 'client_credentials' LIMIT 1""",
        # a rotation that names no successor
        """UPDATE refresh_tokens SET rotated_at = now(), successor_id = gen_random_uuid()
           WHERE id = (SELECT id FROM refresh_tokens WHERE rotated_at IS NULL AND grant_id IN
                       (SELECT id FROM grants WHERE kind = 'client_credentials') LIMIT 1)""",
        # a party on a grant that is not multi-party
        """INSERT INTO grant_parties (grant_id, tenant_id, via)
           SELECT id, holder_tenant_id, 'test' FROM grants WHERE kind = 'client_credentials' LIMIT 1""",
        # a lineage path naming a grant that never existed
        """UPDATE grants SET path = ARRAY[gen_random_uuid()]
           WHERE id = (SELECT id FROM grants WHERE kind = 'party' LIMIT 1)""",
        # two refresh tokens' ciphertexts swapped
        """UPDATE refresh_tokens r SET token_enc = o.token_enc FROM (
               SELECT a.id AS a, b.id AS b, b.token_enc FROM refresh_tokens a, refresh_tokens b
               WHERE a.id < b.id AND a.tenant_id = b.tenant_id ORDER BY a.id, b.id LIMIT 1) o WHERE r.id = o.a""",
    )
    # tokens whose grant is gone (foreign keys bypassed, as a broken restore would)
    async with runtime.sessions() as session, session.begin():
        await session.execute(text("SET LOCAL session_replication_role = replica"))
        await session.execute(text("DELETE FROM grants WHERE id = (SELECT grant_id FROM access_tokens LIMIT 1)"))
    after = await _check(runtime)
    expected = {
        "grant_without_tokens",
        "refresh_token_rotated_without_successor",
        "party_of_non_multi_party_grant",
        "grant_path_broken",
        "unreadable_ciphertext:refresh_tokens.token_enc",
        "refresh_token_grant_missing",
        "access_token_grant_missing",
    }
    assert not expected & set(before), before
    assert expected <= set(after), after

    env = {**os.environ, "BROKER_DATABASE_URL": world["url"]}
    cli = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "broker", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "grant_without_tokens: 1 row(s)" in cli.stdout
    assert "problem(s) found" in cli.stdout
