"""The per-process client cache never outlives the database's word (broker.tenants.clients).

Every change here is made through the tests' own runtime, which stands for another replica: the app's
cache is never told. The hot paths must still see the change on the very next request, because they
re-check their cached snapshot inside the statement that does their work.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select

from broker.db.models import AccessToken, AuditEvent, Grant, RefreshToken
from broker.tenants import secrets as tenant_secrets
from broker.tenants import service as tenants
from tests.oauth_helpers import introspect, post_token, token_ok


async def _warm(client, creds) -> dict[str, Any]:
    """Two requests, so that the second one certainly answered from the cache."""
    await token_ok(client, creds, grant_type="client_credentials")
    return await token_ok(client, creds, grant_type="client_credentials")


async def _rows_of(sessions, tenant_id: uuid.UUID) -> tuple[int, int, int, int]:
    async with sessions() as session:
        counts = [
            await session.scalar(select(func.count()).where(model.tenant_id == tenant_id))
            for model in (Grant, RefreshToken, AccessToken)
        ]
        counts.append(
            await session.scalar(
                select(func.count()).where(AuditEvent.tenant_id == tenant_id, AuditEvent.action == "token.issued")
            )
        )
    return tuple(counts)


async def test_a_secret_revoked_elsewhere_stops_working_on_the_next_request(client, runtime, sessions, make_tenant):
    lender = await make_tenant("cache revoke")
    pair = await _warm(client, lender)
    before = await _rows_of(sessions, lender.tenant_id)
    async with sessions() as session, session.begin():
        (secret,) = await tenant_secrets.list_secrets(session, lender.client_id)
        await tenant_secrets.revoke_secret(session, lender.client_id, secret.id, actor="test", request_id=None)

    refused = await post_token(client, lender, grant_type="client_credentials")
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"] == "invalid_client"
    assert await _rows_of(sessions, lender.tenant_id) == before  # nothing written, not even an audit row

    introspected = await client.post("/oauth/introspect", json={"token": pair["access_token"]}, headers=lender.headers)
    assert introspected.status_code == 401, introspected.text
    garbage = await client.post("/oauth/introspect", json={"token": "not-a-token"}, headers=lender.headers)
    assert garbage.status_code == 401, garbage.text


async def test_a_tenant_disabled_elsewhere_stops_working_on_the_next_request(client, sessions, make_tenant):
    lender = await make_tenant("cache disable")
    pair = await _warm(client, lender)
    async with sessions() as session, session.begin():
        await tenants.disable_tenant(session, lender.client_id, actor="test", request_id=None)

    refused = await post_token(client, lender, grant_type="client_credentials")
    assert refused.status_code == 401, refused.text
    introspected = await client.post("/oauth/introspect", json={"token": pair["access_token"]}, headers=lender.headers)
    assert introspected.status_code == 401, introspected.text


async def test_scopes_changed_elsewhere_apply_on_the_next_request_both_ways(client, sessions, make_tenant):
    lender = await make_tenant("cache scopes", allowed_scopes=("exchange",), default_scopes=("exchange",))
    await _warm(client, lender)
    wider = tenants.TenantSpec(allowed_scopes=("exchange", "user:read"))
    async with sessions() as session, session.begin():
        await tenants.update_tenant(session, lender.client_id, wider, actor="test", request_id=None)
    granted = await token_ok(client, lender, grant_type="client_credentials", scope="exchange user:read")
    assert set(granted["scope"].split()) == {"exchange", "user:read"}

    narrower = tenants.TenantSpec(allowed_scopes=("exchange",))
    async with sessions() as session, session.begin():
        await tenants.update_tenant(session, lender.client_id, narrower, actor="test", request_id=None)
    refused = await post_token(client, lender, grant_type="client_credentials", scope="exchange user:read")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_scope"


async def test_a_new_secret_made_elsewhere_works_at_once_and_the_old_one_until_it_expires(
    client, runtime, sessions, make_tenant
):
    lender = await make_tenant("cache rotate")
    await _warm(client, lender)
    async with sessions() as session, session.begin():
        _, value, _ = await tenant_secrets.rotate_secret(
            session, runtime.ring, lender.client_id, overlap_seconds=3600, actor="test", request_id=None
        )
    rotated = type(lender)(lender.client_id, value, lender.tenant_id)
    assert (await token_ok(client, rotated, grant_type="client_credentials"))["access_token"]
    assert (await token_ok(client, lender, grant_type="client_credentials"))["access_token"]


async def test_one_issuance_writes_its_four_rows_together(client, sessions, make_tenant):
    lender = await make_tenant("cache rows")
    assert await _rows_of(sessions, lender.tenant_id) == (0, 0, 0, 0)
    pair = await _warm(client, lender)
    assert await _rows_of(sessions, lender.tenant_id) == (2, 2, 2, 2)
    described = await introspect(client, lender, pair["refresh_token"])
    assert described["active"] is True
    assert described["token_type"] == "refresh_token"
