"""Gateway secrets and queued upstream calls are tenant data like any other: re-encryption covers them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from broker.crypto import envelope
from broker.crypto.keyring import generate_key
from broker.db import migrate
from broker.db.models import TenantUpstream, UpstreamCall
from broker.gateway import calls, upstreams
from broker.keys import reencrypt, sealing
from broker.tenants import service as tenants
from tests import dbsetup
from tests.keys_helpers import runtime_for

K1, K2 = generate_key(), generate_key()
R1 = f"k1:{K1}"
R_ACTIVE = f"k2:{K2},k1:{K1}"


@pytest.fixture
def scratch() -> Iterator[str]:
    url = dbsetup.create_database(os.environ["BROKER_DATABASE_URL"], prefix="broker_gwkeys")
    migrate.upgrade(url)
    try:
        yield url
    finally:
        dbsetup.drop_database(url)


async def test_reencryption_moves_legacy_upstream_secrets_and_call_payloads_to_data_keys(scratch):
    secret = "upstream-secret-value-1234"
    before = runtime_for(scratch, R1)
    try:
        async with before.sessions() as session, session.begin():
            tenant, _ = await tenants.create_tenant(
                session, before.ring, tenants.TenantSpec(name="gw"), actor="test", request_id=None
            )
            await upstreams.set_upstream(
                session,
                before.ring,
                before.settings,
                tenant.client_id,
                upstreams.UpstreamSpec(base_url="https://sandbox.plaid.com", client_id="up", secret=secret),
                actor="test",
                request_id=None,
            )
            call_id = await calls.enqueue(
                session,
                before.ring,
                tenant_id=tenant.id,
                operation="revoke",
                payload={"token": "pda-x"},
                request_id=None,
            )
            row = await session.scalar(select(TenantUpstream).where(TenantUpstream.tenant_id == tenant.id))
            assert row is not None
            assert row.secret_enc.startswith("v2.")
            # Rewrite both as rows written before data keys existed: v1 envelopes under the ring key k1.
            legacy_secret = envelope.seal(before.ring, secret.encode(), upstreams.secret_aad(tenant.id, row.id))
            legacy_payload = envelope.seal(before.ring, b'{"token": "pda-x"}', calls.payload_aad(tenant.id, call_id))
            await session.execute(
                update(TenantUpstream).where(TenantUpstream.id == row.id).values(secret_enc=legacy_secret)
            )
            await session.execute(
                update(UpstreamCall).where(UpstreamCall.id == call_id).values(payload_enc=legacy_payload)
            )
    finally:
        await before.close()

    rotated = runtime_for(scratch, R_ACTIVE)
    try:
        async with rotated.sessions() as session:
            assert await reencrypt.pending(session, rotated.ring) >= 2
        async with rotated.sessions() as session:
            result = await reencrypt.reencrypt(session, rotated.ring, batch_size=10)
        assert result.rows == 2
        assert not result.unreadable
        async with rotated.sessions() as session:
            assert await reencrypt.pending(session, rotated.ring) == 0
        async with rotated.sessions() as session, session.begin():
            row = await session.scalar(select(TenantUpstream).where(TenantUpstream.tenant_id == tenant.id))
            payload = await session.scalar(select(UpstreamCall.payload_enc).where(UpstreamCall.id == call_id))
            assert row is not None
            assert payload is not None
            assert row.secret_enc.startswith("v2.")
            assert payload.startswith("v2.")
            opened = await upstreams.open_upstream(session, rotated.ring, tenant.id)
            assert opened is not None
            assert opened.secret == secret
            assert secret not in repr(opened)
            assert await sealing.open_(session, rotated.ring, payload, calls.payload_aad(tenant.id, call_id)) == (
                b'{"token": "pda-x"}'
            )
    finally:
        await rotated.close()
