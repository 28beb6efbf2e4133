"""``client_credentials`` (RFC 6749 §4.4): tokens for the client itself, in one statement.

Plaid issues a refresh token here too (and its SDK requires one), although RFC 6749 §4.4.3 says a
refresh token SHOULD NOT be included; broker follows Plaid. The optional ``resource`` (RFC 8707) must
be the issuer or a configured resource, else ``invalid_target``; it becomes the token's ``aud``.

This is the hottest path broker has, so it reaches the database through one prepared statement on the
asyncpg pool (:mod:`broker.db.hotpath`), in autocommit, not through an ORM session.

Invariants:
    * The grant, the refresh token (digest plus AES-256-GCM envelope under the tenant's data key, its
      AAD binding it to its row and tenant), the access token (digest) and the audit event are written
      by ONE statement: one implicit transaction, committed before the response is built. Either all
      four rows exist or none does.
    * The statement re-checks the caller's cached authentication (``clients.STILL_VALID``): if the
      tenant was disabled or edited, or the secret revoked or expired, since the snapshot was cached,
      nothing is written or audited and ``StaleClient`` is raised, so the caller authenticates again
      from the database (``http.auth.as_client``). The cache can never widen what a client may do.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from broker import errors, scopes
from broker.crypto import envelope, tokens
from broker.db.hotpath import register
from broker.keys import sealing
from broker.oauth.flows.base import IssuedTokens, ttl
from broker.tenants.clients import STILL_VALID, StaleClient

if TYPE_CHECKING:
    from broker.context import Runtime
    from broker.tenants.clients import AuthenticatedClient

GRANT_TYPE = "client_credentials"

_ISSUE = register(
    """
WITH ok AS ({still_valid}),
g AS (
    INSERT INTO grants (id, tenant_id, kind, requester_tenant_id, holder_tenant_id, scopes, audience, resource,
                        access_token_ttl, refresh_token_ttl, request_id, created_at)
    SELECT $4::uuid, $1::uuid, 'client_credentials', $1::uuid, $1::uuid, $5::text[], $6::text, $7::text,
           $8::int, $9::int, $10::text, $11::timestamptz
    FROM ok
    RETURNING id
),
r AS (
    INSERT INTO refresh_tokens (id, tenant_id, grant_id, digest, token_enc, created_at, expires_at)
    SELECT $12::uuid, $1::uuid, g.id, $13::bytea, $14::text, $11::timestamptz, $15::timestamptz FROM g
),
a AS (
    INSERT INTO access_tokens (digest, tenant_id, grant_id, scopes, created_at, expires_at)
    SELECT $16::bytea, $1::uuid, g.id, $5::text[], $11::timestamptz, $17::timestamptz FROM g
),
e AS (
    INSERT INTO audit_events (tenant_id, request_id, actor, action, outcome, grant_id, detail)
    SELECT $1::uuid, $10::text, $18::text, 'token.issued', 'success', g.id, $19::jsonb FROM g
)
SELECT count(*) AS issued FROM g
""".format(still_valid=STILL_VALID.format(tenant="$1::uuid", updated_at="$2::timestamptz", secret="$3::uuid"))  # noqa: S608 - constants only; every value is a bound parameter
)


async def issue(
    runtime: Runtime, client: AuthenticatedClient, params: dict[str, list[str]], request_id: str
) -> IssuedTokens:
    """Issue a ``client_credentials`` pair in one statement (see the module docstring).

    Raises:
        InvalidScope: the requested scope is not allowed.
        InvalidTarget: ``resource`` is not the issuer or a configured resource.
        StaleClient: the client's cached authentication no longer holds; nothing was written.
    """
    settings = runtime.settings
    scope = params.get("scope")
    granted = scopes.narrow(scopes.parse(scope[0] if scope else None), client.allowed_scopes, client.default_scopes)
    resource_values = params.get("resource")
    resource = resource_values[0] if resource_values else None
    if resource is not None and resource not in settings.allowed_resources:
        raise errors.InvalidTarget("unknown resource")
    access_ttl = ttl(client.access_token_ttl, settings.access_token_ttl)
    refresh_ttl = ttl(client.refresh_token_ttl, settings.refresh_token_ttl)

    now = datetime.now(UTC)
    hash_key = runtime.ring.hash_key
    access, refresh = tokens.new_access_token(), tokens.new_refresh_token()
    grant_id, refresh_id = uuid.uuid4(), uuid.uuid4()
    data_key = await sealing.hot_data_key(runtime, client.id)
    sealed = envelope.seal_with_data_key(
        str(data_key.id),
        data_key.key,
        refresh.encode(),
        envelope.aad_for("refresh_tokens", "token", client.id, refresh_id),
    )
    granted_list = list(granted)
    row = await runtime.hot.fetchrow(
        _ISSUE,
        client.id,
        client.updated_at,
        client.secret_id,
        grant_id,
        granted_list,
        resource or client.client_id,
        resource,
        access_ttl,
        refresh_ttl,
        request_id,
        now,
        refresh_id,
        tokens.digest(hash_key, refresh),
        sealed,
        now + timedelta(seconds=refresh_ttl),
        tokens.digest(hash_key, access),
        now + timedelta(seconds=access_ttl),
        client.client_id,
        json.dumps({"grant_type": GRANT_TYPE, "scope": granted_list}),
    )
    if row is None or row["issued"] != 1:
        raise StaleClient
    return IssuedTokens(access, refresh, access_ttl, granted, grant_id)
