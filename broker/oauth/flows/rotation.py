"""The common cases of ``refresh_token`` on the hot pool: a holder's first use of its token, a party's fork.

Most refresh requests are one of two things: the holder of a live token using it for the first time
(rotation), or a party of a multi-party grant presenting the shared token with its own credentials
(a fork of its own lineage). The full flow (:mod:`broker.oauth.flows.refresh_token`) spends about ten
times the CPU of the one-statement paths on ORM statements and eleven round trips. Here each takes
four round trips (``BEGIN``, the locking read, one write statement, ``COMMIT``) on the asyncpg pool,
with no ORM objects.

Invariants (the same as the full flow's, which stays the authority on every other case):
    * The presented token's row is read ``FOR UPDATE`` with its grant and the liveness of every
      ancestor, so N concurrent refreshes of one token still mint exactly one successor pair: the
      first rotates and commits, the others then find ``rotated_at`` set.
    * Only what the full flow would do is done here. Rotation: a known token, not multi-party, held by
      the caller, neither it nor its grant nor any ancestor revoked, never rotated, not expired. Fork:
      a live, unexpired shared token presented by an active party, within the lineage depth limit.
      Anything else (retry within the grace window, replay, refusal, error) returns None with nothing
      written, and the caller runs the full flow, which reads the row again under its own lock.
    * One statement writes everything: for a rotation the successor refresh token (digest plus
      AES-256-GCM envelope under the tenant's data key, AAD bound to row and tenant), the access token,
      the rotation mark with the sealed retry pair, the predecessor's dropped retry pair and the audit
      event; for a fork the party grant (lineage ``path`` = the shared grant's path and the shared
      grant), its token pair and the audit event. The transaction commits before the response is built.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from broker import scopes
from broker.crypto import envelope, tokens
from broker.db.hotpath import register
from broker.keys import sealing
from broker.oauth.flows.base import MAX_LINEAGE_DEPTH, IssuedTokens, retry_pair_aad, retry_pair_plaintext

if TYPE_CHECKING:
    import asyncpg

    from broker.context import Runtime
    from broker.crypto.datakeys import DataKey
    from broker.tenants.clients import AuthenticatedClient

_LOCK = register(
    """
SELECT t.id, t.parent_id, t.rotated_at, t.revoked_at, t.expires_at,
       g.id AS grant_id, g.tenant_id, g.kind, g.holder_tenant_id, g.revoked_at AS grant_revoked_at, g.scopes,
       g.access_token_ttl, g.refresh_token_ttl, g.path, g.user_pk, g.audience, g.subject_token_type,
       EXISTS (SELECT 1 FROM grants AS a WHERE a.id = ANY (g.path) AND a.revoked_at IS NOT NULL) AS ancestor_revoked,
       EXISTS (SELECT 1 FROM grant_parties AS p
               WHERE p.grant_id = g.id AND p.tenant_id = $2::uuid AND p.withdrawn_at IS NULL) AS caller_is_party,
       EXISTS (SELECT 1 FROM upstream_grants AS u WHERE u.id = g.id) AS gateway
FROM refresh_tokens AS t
JOIN grants AS g ON g.id = t.grant_id
WHERE t.digest = $1::bytea
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


_FORK = register(
    """
WITH forked AS (
    INSERT INTO grants (id, tenant_id, kind, requester_tenant_id, holder_tenant_id, parent_id, path, user_pk, scopes,
                        audience, subject_token_type, access_token_ttl, refresh_token_ttl, request_id, created_at)
    VALUES ($1::uuid, $2::uuid, 'party', $3::uuid, $3::uuid, $4::uuid, $5::uuid[], $6::uuid, $7::text[],
            $8::text, $9::text, $10::int, $11::int, $12::text, $13::timestamptz)
    RETURNING id
),
refresh AS (
    INSERT INTO refresh_tokens (id, tenant_id, grant_id, digest, token_enc, created_at, expires_at)
    SELECT $14::uuid, $2::uuid, forked.id, $15::bytea, $16::text, $13::timestamptz, $17::timestamptz FROM forked
),
access AS (
    INSERT INTO access_tokens (digest, tenant_id, grant_id, scopes, created_at, expires_at)
    SELECT $18::bytea, $2::uuid, forked.id, $7::text[], $13::timestamptz, $19::timestamptz FROM forked
),
audited AS (
    INSERT INTO audit_events (tenant_id, request_id, actor, action, outcome, grant_id, detail)
    SELECT $2::uuid, $12::text, $20::text, 'token.party_forked', 'success', forked.id, $21::jsonb FROM forked
)
SELECT count(*) FROM forked
"""
)


async def try_rotate(
    runtime: Runtime, client: AuthenticatedClient, params: dict[str, list[str]], request_id: str
) -> IssuedTokens | None:
    """Rotate the presented refresh token, or fork a party lineage from a shared one, in the common case.

    Returns None, having written nothing, for every case the full flow must decide (module docstring).

    Raises:
        InvalidScope: the requested scope is malformed or wider than the grant's (as the full flow).
    """
    presented = params.get("refresh_token")
    if not presented:
        return None
    requested = scopes.parse(params["scope"][0] if params.get("scope") else None)
    now = datetime.now(UTC)
    async with runtime.hot.transaction() as connection:
        row = await connection.fetchrow(_LOCK, tokens.digest(runtime.ring.hash_key, presented[0]), client.id)
        if (
            row is None
            or row["grant_revoked_at"] is not None
            or row["ancestor_revoked"]
            or row["revoked_at"] is not None
            or row["expires_at"] <= now
            or row["gateway"]  # issued through an upstream: only broker.gateway may refresh it
        ):
            return None  # the full flow decides, under its own lock
        if row["kind"] == "multi_party":
            if not row["caller_is_party"] or len(row["path"]) + 1 > MAX_LINEAGE_DEPTH:
                return None
            return await _fork(runtime, connection, client, row, requested=requested, request_id=request_id, now=now)
        if row["holder_tenant_id"] != client.id or row["rotated_at"] is not None:
            return None
        return await _rotate(runtime, connection, client, row, requested=requested, request_id=request_id, now=now)


@dataclass(frozen=True, slots=True)
class _Pair:
    """A new token pair and what the statements store of it."""

    access: str
    refresh: str
    refresh_id: uuid.UUID
    access_digest: bytes
    refresh_digest: bytes
    sealed_refresh: str


def _mint(runtime: Runtime, data_key: DataKey, tenant_id: uuid.UUID) -> _Pair:
    access, refresh, refresh_id = tokens.new_access_token(), tokens.new_refresh_token(), uuid.uuid4()
    aad = envelope.aad_for("refresh_tokens", "token", tenant_id, refresh_id)
    hash_key = runtime.ring.hash_key
    return _Pair(
        access,
        refresh,
        refresh_id,
        tokens.digest(hash_key, access),
        tokens.digest(hash_key, refresh),
        envelope.seal_with_data_key(str(data_key.id), data_key.key, refresh.encode(), aad),
    )


async def _rotate(
    runtime: Runtime,
    connection: asyncpg.Connection,
    client: AuthenticatedClient,
    row: asyncpg.Record,
    *,
    requested: tuple[str, ...] | None,
    request_id: str,
    now: datetime,
) -> IssuedTokens:
    grant_id, tenant_id, token_id = row["grant_id"], row["tenant_id"], row["id"]
    access_scopes = scopes.narrow(requested, row["scopes"], row["scopes"])
    access_ttl, refresh_ttl = row["access_token_ttl"], row["refresh_token_ttl"]
    data_key = await sealing.hot_data_key(runtime, tenant_id)
    pair = _mint(runtime, data_key, tenant_id)
    issued = IssuedTokens(pair.access, pair.refresh, access_ttl, access_scopes, grant_id)
    sealed_retry_pair = envelope.seal_with_data_key(
        str(data_key.id), data_key.key, retry_pair_plaintext(issued, now), retry_pair_aad(token_id, tenant_id)
    )
    await connection.execute(
        _ROTATE,
        pair.refresh_id,
        tenant_id,
        grant_id,
        pair.refresh_digest,
        pair.sealed_refresh,
        token_id,
        now,
        now + timedelta(seconds=refresh_ttl),
        pair.access_digest,
        list(access_scopes),
        now + timedelta(seconds=access_ttl),
        sealed_retry_pair,
        row["parent_id"],
        request_id,
        client.client_id,
        json.dumps({"scope": list(access_scopes)}),
    )
    return issued


async def _fork(
    runtime: Runtime,
    connection: asyncpg.Connection,
    client: AuthenticatedClient,
    shared: asyncpg.Record,
    *,
    requested: tuple[str, ...] | None,
    request_id: str,
    now: datetime,
) -> IssuedTokens:
    tenant_id, shared_id = shared["tenant_id"], shared["grant_id"]
    granted = scopes.narrow(requested, shared["scopes"], shared["scopes"])
    access_ttl, refresh_ttl = shared["access_token_ttl"], shared["refresh_token_ttl"]
    data_key = await sealing.hot_data_key(runtime, tenant_id)
    pair = _mint(runtime, data_key, tenant_id)
    grant_id = uuid.uuid4()
    forked = await connection.fetchval(
        _FORK,
        grant_id,
        tenant_id,
        client.id,
        shared_id,
        [*shared["path"], shared_id],
        shared["user_pk"],
        list(granted),
        shared["audience"],
        shared["subject_token_type"],
        access_ttl,
        refresh_ttl,
        request_id,
        now,
        pair.refresh_id,
        pair.refresh_digest,
        pair.sealed_refresh,
        now + timedelta(seconds=refresh_ttl),
        pair.access_digest,
        now + timedelta(seconds=access_ttl),
        client.client_id,
        json.dumps({"shared_grant_id": str(shared_id), "scope": list(granted)}),
    )
    if forked != 1:  # pragma: no cover - the insert has no condition that could skip it
        msg = "party fork wrote no grant"
        raise RuntimeError(msg)
    return IssuedTokens(pair.access, pair.refresh, access_ttl, granted, grant_id)
