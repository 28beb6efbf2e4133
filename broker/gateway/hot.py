"""Gateway ``client_credentials`` recorded in one statement on the asyncpg pool (as issuer mode's hot path).

What the upstream issued becomes, in ONE statement (one implicit transaction, committed before the
response is built): the grant, its upstream record (the upstream refresh token sealed under the tenant's
data key), the refresh token the caller gets (broker's in held mode, the upstream's in transparent
mode; digest plus envelope), the upstream's access token (digest) and the audit event. Either all five
rows exist or none does.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from broker.crypto import envelope, tokens
from broker.db.hotpath import register
from broker.keys import sealing
from broker.oauth.flows.base import IssuedTokens

if TYPE_CHECKING:
    from broker.context import Runtime
    from broker.gateway.client import Upstream
    from broker.tenants.clients import AuthenticatedClient

_RECORD = register(
    """
WITH g AS (
    INSERT INTO grants (id, tenant_id, kind, requester_tenant_id, holder_tenant_id, scopes, audience, resource,
                        access_token_ttl, refresh_token_ttl, request_id, created_at)
    VALUES ($1::uuid, $2::uuid, 'client_credentials', $2::uuid, $2::uuid, $3::text[], $4::text, $5::text,
            $6::int, $7::int, $8::text, $9::timestamptz)
    RETURNING id
),
u AS (
    INSERT INTO upstream_grants (id, tenant_id, token_enc, upstream_request_id, updated_at)
    SELECT g.id, $2::uuid, $10::text, $11::text, $9::timestamptz FROM g
),
r AS (
    INSERT INTO refresh_tokens (id, tenant_id, grant_id, digest, token_enc, created_at, expires_at)
    SELECT $12::uuid, $2::uuid, g.id, $13::bytea, $14::text, $9::timestamptz, $15::timestamptz FROM g
),
a AS (
    INSERT INTO access_tokens (digest, tenant_id, grant_id, scopes, created_at, expires_at)
    SELECT $16::bytea, $2::uuid, g.id, $3::text[], $9::timestamptz, $17::timestamptz FROM g
),
e AS (
    INSERT INTO audit_events (tenant_id, request_id, actor, action, outcome, grant_id, detail)
    SELECT $2::uuid, $8::text, $18::text, 'token.issued', 'success', g.id, $19::jsonb FROM g
)
SELECT count(*) AS issued FROM g
"""
)


async def record_client_credentials(
    runtime: Runtime,
    client: AuthenticatedClient,
    upstream: Upstream,
    *,
    access_token: str,
    upstream_refresh_token: str,
    expires_in: int,
    scopes: tuple[str, ...],
    resource: str | None,
    refresh_ttl: int,
    request_id: str,
    upstream_request_id: str | None,
    now: datetime,
) -> IssuedTokens:
    """Record a ``client_credentials`` grant the upstream issued (see the module docstring)."""
    grant_id, refresh_id = uuid.uuid4(), uuid.uuid4()
    refresh = tokens.new_refresh_token() if upstream.held else upstream_refresh_token
    data_key = await sealing.hot_data_key(runtime, client.id)
    dek = str(data_key.id)
    held_sealed = envelope.seal_with_data_key(
        dek,
        data_key.key,
        upstream_refresh_token.encode(),
        envelope.aad_for("upstream_grants", "token", client.id, grant_id),
    )
    refresh_sealed = envelope.seal_with_data_key(
        dek, data_key.key, refresh.encode(), envelope.aad_for("refresh_tokens", "token", client.id, refresh_id)
    )
    hash_key = runtime.ring.hash_key
    detail: dict[str, Any] = {
        "grant_type": "client_credentials",
        "scope": list(scopes),
        "gateway": upstream.mode,
        "upstream": upstream.base_url,
        "upstream_request_id": upstream_request_id,
    }
    await runtime.hot.fetchval(
        _RECORD,
        grant_id,
        client.id,
        list(scopes),
        resource or client.client_id,
        resource,
        expires_in,
        refresh_ttl,
        request_id,
        now,
        held_sealed,
        upstream_request_id,
        refresh_id,
        tokens.digest(hash_key, refresh),
        refresh_sealed,
        now + timedelta(seconds=refresh_ttl),
        tokens.digest(hash_key, access_token),
        now + timedelta(seconds=expires_in),
        client.client_id,
        json.dumps(detail),
    )
    return IssuedTokens(access_token, refresh, expires_in, scopes, grant_id)
