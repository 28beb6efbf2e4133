"""The common case of ``refresh_token`` on the hot pool: a live token of its holder, used for the first time.

Most refresh requests are exactly that, and the full flow (:mod:`broker.oauth.flows.refresh_token`)
spends about ten times the CPU of the one-statement paths on ORM statements and eleven round trips.
Here the same rotation takes four round trips (``BEGIN``, the locking read, one write statement,
``COMMIT``) on the asyncpg pool, with no ORM objects.

Invariants (the same as the full flow's, which stays the authority on every other case):
    * The presented token's row is read ``FOR UPDATE`` with its grant and the liveness of every
      ancestor, so N concurrent refreshes of one token still mint exactly one successor pair: the
      first rotates and commits, the others then find ``rotated_at`` set.
    * Only a token that the full flow would rotate is rotated here: known, not multi-party, held by the
      caller, neither it nor its grant nor any ancestor revoked, never rotated, not expired. Anything
      else (retry within the grace window, replay, fork of a shared token, refusal) returns None with
      nothing written, and the caller runs the full flow, which reads the row again under its own lock.
    * One statement writes the successor refresh token (digest plus AES-256-GCM envelope under the
      tenant's data key, AAD bound to row and tenant), the access token, the rotation mark with the
      sealed retry pair, the predecessor's dropped retry pair and the audit event; the transaction
      commits before the response is built.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from broker import scopes
from broker.crypto import envelope, tokens
from broker.db.hotpath import register
from broker.keys import sealing
from broker.oauth.flows.base import IssuedTokens, retry_pair_aad, retry_pair_plaintext

if TYPE_CHECKING:
    from broker.context import Runtime
    from broker.tenants.clients import AuthenticatedClient

_LOCK = register(
    """
SELECT t.id, t.parent_id, t.rotated_at, t.revoked_at, t.expires_at,
       g.id AS grant_id, g.tenant_id, g.kind, g.holder_tenant_id, g.revoked_at AS grant_revoked_at, g.scopes,
       g.access_token_ttl, g.refresh_token_ttl,
       EXISTS (SELECT 1 FROM grants AS a WHERE a.id = ANY (g.path) AND a.revoked_at IS NOT NULL) AS ancestor_revoked
FROM refresh_tokens AS t
JOIN grants AS g ON g.id = t.grant_id
WHERE t.digest = $1
FOR UPDATE OF t
"""
)

_ROTATE = register(
    """
WITH successor AS (
    INSERT INTO refresh_tokens (id, tenant_id, grant_id, digest, token_enc, parent_id, created_at, expires_at)
    VALUES ($1::uuid, $2::uuid, $3::uuid, $4::bytea, $5::text, $6::uuid, $7::timestamptz, $8::timestamptz)
),
access AS (
    INSERT INTO access_tokens (digest, tenant_id, grant_id, scopes, created_at, expires_at)
    VALUES ($9::bytea, $2::uuid, $3::uuid, $10::text[], $7::timestamptz, $11::timestamptz)
),
rotated AS (
    UPDATE refresh_tokens SET rotated_at = $7::timestamptz, successor_id = $1::uuid, retry_pair_enc = $12::text
    WHERE id = $6::uuid
),
predecessor AS (
    UPDATE refresh_tokens SET retry_pair_enc = NULL WHERE id = $13::uuid AND retry_pair_enc IS NOT NULL
),
audited AS (
    INSERT INTO audit_events (tenant_id, request_id, actor, action, outcome, grant_id, detail)
    VALUES ($2::uuid, $14::text, $15::text, 'token.refreshed', 'success', $3::uuid, $16::jsonb)
)
SELECT 1
"""
)


async def try_rotate(
    runtime: Runtime, client: AuthenticatedClient, params: dict[str, list[str]], request_id: str
) -> IssuedTokens | None:
    """Rotate the presented refresh token if this is the common case (module docstring), else None.

    Raises:
        InvalidScope: the requested scope is malformed or wider than the grant's (as the full flow).
    """
    presented = params.get("refresh_token")
    if not presented:
        return None
    requested = scopes.parse(params["scope"][0] if params.get("scope") else None)
    ring = runtime.ring
    now = datetime.now(UTC)
    async with runtime.hot.transaction() as connection:
        row = await connection.fetchrow(_LOCK, tokens.digest(ring.hash_key, presented[0]))
        if (
            row is None
            or row["kind"] == "multi_party"
            or row["holder_tenant_id"] != client.id
            or row["grant_revoked_at"] is not None
            or row["ancestor_revoked"]
            or row["revoked_at"] is not None
            or row["rotated_at"] is not None
            or row["expires_at"] <= now
        ):
            return None  # the full flow decides, under its own lock
        grant_id, tenant_id, token_id = row["grant_id"], row["tenant_id"], row["id"]
        access_scopes = scopes.narrow(requested, row["scopes"], row["scopes"])
        access_ttl, refresh_ttl = row["access_token_ttl"], row["refresh_token_ttl"]
        access, refresh, refresh_id = tokens.new_access_token(), tokens.new_refresh_token(), uuid.uuid4()
        issued = IssuedTokens(access, refresh, access_ttl, access_scopes, grant_id)
        data_key = await sealing.hot_data_key(runtime, tenant_id)
        dek_id = str(data_key.id)
        token_aad = envelope.aad_for("refresh_tokens", "token", tenant_id, refresh_id)
        sealed_token = envelope.seal_with_data_key(dek_id, data_key.key, refresh.encode(), token_aad)
        sealed_pair = envelope.seal_with_data_key(
            dek_id, data_key.key, retry_pair_plaintext(issued, now), retry_pair_aad(token_id, tenant_id)
        )
        await connection.execute(
            _ROTATE,
            refresh_id,
            tenant_id,
            grant_id,
            tokens.digest(ring.hash_key, refresh),
            sealed_token,
            token_id,
            now,
            now + timedelta(seconds=refresh_ttl),
            tokens.digest(ring.hash_key, access),
            list(access_scopes),
            now + timedelta(seconds=access_ttl),
            sealed_pair,
            row["parent_id"],
            request_id,
            client.client_id,
            json.dumps({"scope": list(access_scopes)}),
        )
    return issued
