"""Token introspection (RFC 7662 §2) with Plaid's response fields.

Invariants:
    * Only the token's owner tenant, its requester, its holder and its active parties see
      ``active: true``; anyone else, and any unknown, expired, revoked or rotated token, gets
      ``{active: false}`` and learns nothing else (RFC 7662 §2.2).
    * ``aud`` is always a string (the comma-joined parties, the target client, or the resource):
      plaid-python rejects an array.
    * An introspection by anyone but the owner tenant is audited.
    * One statement per introspection, on the asyncpg pool (:mod:`broker.db.hotpath`): it reads the
      token, its grant, the ancestors' liveness, the caller's party row, the requester, holder and user,
      and writes the audit event when there is one. When the caller is the owner nothing is written,
      so the statement commits without a WAL flush.
    * The statement re-checks the caller's cached authentication (``clients.STILL_VALID``) and raises
      ``StaleClient`` with nothing written when it no longer holds (see ``flows.client_credentials``).
    * With a read replica (``BROKER_DATABASE_READ_URL``) the replica answers only what it can answer
      alone: the owner tenant introspecting a token that is live there (nothing to audit). Anything
      else (unknown, inactive, not the owner, a caller the replica does not know yet) is asked of the
      primary, which also writes the audit event. So a token just issued introspects as active at once
      (read-your-writes), while a revocation reaches the replica's answers after its replication lag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker.crypto import tokens
from broker.db.hotpath import register
from broker.oauth import repository
from broker.observability import metrics
from broker.tenants.clients import STILL_VALID, StaleClient

if TYPE_CHECKING:
    import asyncpg
    from sqlalchemy.engine import Row
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.db.hotpath import HotPool
    from broker.tenants.clients import AuthenticatedClient


@dataclass(frozen=True)
class Introspection:
    """An active token's description."""

    scope: str
    client_id: str
    sub: str
    aud: str
    iss: str
    exp: int
    iat: int
    token_type: str
    user_id: str | None


def token_kind(token: str) -> str | None:
    """``access`` or ``refresh`` by prefix, else None (never looked up)."""
    if token.startswith(tokens.ACCESS_PREFIX):
        return "access"
    if token.startswith(tokens.REFRESH_PREFIX):
        return "refresh"
    return None


async def describe(
    session: AsyncSession, runtime: Runtime, caller: AuthenticatedClient, token: str
) -> tuple[str, Row[Any]] | None:
    """Look a token up (one query) with what visibility and liveness checks need."""
    kind = token_kind(token)
    if kind is None:
        return None
    digest = tokens.digest(runtime.ring.hash_key, token)
    if kind == "access":
        row = await repository.describe_access(session, digest, caller.id)
    else:
        row = await repository.describe_refresh(session, digest, caller.id)
    return None if row is None else (kind, row)


def visible_to(row: Row[Any], caller: AuthenticatedClient) -> bool:
    """Whether ``caller`` is the owner, requester, holder or an active party of the token's grant."""
    grant = row.Grant
    return caller.id in {grant.tenant_id, grant.requester_tenant_id, grant.holder_tenant_id} or bool(
        row.caller_is_party
    )


def _statement(kind: str, *, audit: bool = True) -> str:
    """The describe-and-audit statement for an access or a refresh token (parameters in ``introspect``).

    Without ``audit`` it only reads (for a read replica, which refuses any write) and takes ``$1``-``$4``.
    """
    token_table, token_columns = {
        "access": ("access_tokens", "tok.scopes AS token_scopes, NULL::timestamptz AS rotated_at"),
        "refresh": ("refresh_tokens", "NULL::text[] AS token_scopes, tok.rotated_at"),
    }[kind]
    still_valid = STILL_VALID.format(tenant="$2::uuid", updated_at="$3::timestamptz", secret="$4::uuid")
    audited = (
        """,
audited AS (
    INSERT INTO audit_events (tenant_id, request_id, actor, action, outcome, grant_id, user_id, detail)
    SELECT d.tenant_id, $5::text, $6::text, 'token.introspected',
           CASE WHEN d.visible THEN 'success' ELSE 'denied' END, d.grant_id, d.user_id, $7::jsonb
    FROM d
    WHERE d.tenant_id <> $2::uuid AND EXISTS (SELECT 1 FROM ok)
)"""
        if audit
        else ""
    )
    return f"""
WITH ok AS ({still_valid}),
d AS (
    SELECT tok.expires_at, tok.revoked_at AS token_revoked_at, tok.created_at AS issued_at, {token_columns},
           g.id AS grant_id, g.tenant_id, g.scopes AS grant_scopes, g.audience, g.revoked_at AS grant_revoked_at,
           EXISTS (SELECT 1 FROM grants AS ancestor
                   WHERE ancestor.id = any(g.path) AND ancestor.revoked_at IS NOT NULL) AS ancestor_revoked,
           ($2::uuid = g.tenant_id OR $2::uuid = g.requester_tenant_id
            OR $2::uuid IS NOT DISTINCT FROM g.holder_tenant_id
            OR EXISTS (SELECT 1 FROM grant_parties AS p
                       WHERE p.grant_id = g.id AND p.tenant_id = $2::uuid AND p.withdrawn_at IS NULL)) AS visible,
           requester.client_id AS requester_client_id, holder.client_id AS holder_client_id, u.user_id
    FROM {token_table} AS tok
    JOIN grants AS g ON g.id = tok.grant_id
    JOIN tenants AS requester ON requester.id = g.requester_tenant_id
    LEFT JOIN tenants AS holder ON holder.id = g.holder_tenant_id
    LEFT JOIN users AS u ON u.id = g.user_pk
    WHERE tok.digest = $1::bytea
){audited}
SELECT EXISTS (SELECT 1 FROM ok) AS authorized, d.* FROM (SELECT 1) AS one LEFT JOIN d ON true
"""  # noqa: S608 - constants only


_STILL_VALID = register(
    "SELECT EXISTS ({})".format(STILL_VALID.format(tenant="$1::uuid", updated_at="$2::timestamptz", secret="$3::uuid"))
)
_DESCRIBE = {kind: register(_statement(kind)) for kind in ("access", "refresh")}
_DESCRIBE_READ = {kind: register(_statement(kind, audit=False)) for kind in ("access", "refresh")}
_AUDIT_DETAIL = {kind: json.dumps({"token_kind": kind}) for kind in ("access", "refresh")}


async def introspect(
    runtime: Runtime, caller: AuthenticatedClient, token: str, request_id: str
) -> Introspection | None:
    """Describe ``token`` to ``caller`` in one statement, or None when it must be reported inactive.

    Raises:
        StaleClient: the caller's cached authentication no longer holds; nothing was written.
    """
    kind = token_kind(token)
    if kind is None:  # never looked up; the caller's snapshot is still checked
        if not await runtime.hot.fetchval(_STILL_VALID, caller.id, caller.updated_at, caller.secret_id):
            raise StaleClient
        return None
    digest = tokens.digest(runtime.ring.hash_key, token)
    if runtime.read is not None:
        answer = await _from_replica(runtime, runtime.read, kind, digest, caller)
        if answer is not None:
            return answer
    row = await runtime.hot.fetchrow(
        _DESCRIBE[kind],
        digest,
        caller.id,
        caller.updated_at,
        caller.secret_id,
        request_id,
        caller.client_id,
        _AUDIT_DETAIL[kind],
    )
    if row is None or not row["authorized"]:
        raise StaleClient
    if row["grant_id"] is None or not row["visible"]:
        return None
    return _answer(runtime, kind, row)


async def _from_replica(
    runtime: Runtime, replica: HotPool, kind: str, digest: bytes, caller: AuthenticatedClient
) -> Introspection | None:
    """The replica's answer when it can give it alone (the owner, a live token), else None: ask the primary."""
    if not replica.available:
        metrics.INTROSPECTION_READS.inc("primary")
        return None
    try:
        seen = await replica.fetchrow(_DESCRIBE_READ[kind], digest, caller.id, caller.updated_at, caller.secret_id)
    except Exception as exc:  # noqa: BLE001 - the replica is optional: the primary answers while it is away
        replica.suspend(exc)
        metrics.INTROSPECTION_READS.inc("primary")
        return None
    answer = None
    if seen is not None and seen["authorized"] and seen["grant_id"] is not None and seen["tenant_id"] == caller.id:
        answer = _answer(runtime, kind, seen)
    metrics.INTROSPECTION_READS.inc("primary" if answer is None else "replica")
    return answer


def _answer(runtime: Runtime, kind: str, row: Any) -> Introspection | None:  # noqa: ANN401 - an asyncpg Record
    """The description of a visible token's row, or None when it is not live."""
    now = datetime.now(UTC)
    live = (
        row["grant_revoked_at"] is None
        and not row["ancestor_revoked"]
        and row["token_revoked_at"] is None
        and row["rotated_at"] is None
        and row["expires_at"] > now
    )
    if not live:
        return None
    client_id: str = row["holder_client_id"] or row["requester_client_id"]
    user_id: str | None = row["user_id"]
    token_scopes = row["token_scopes"] if kind == "access" else row["grant_scopes"]
    return Introspection(
        scope=" ".join(token_scopes),
        client_id=client_id,
        sub=user_id or client_id,
        aud=row["audience"],
        iss=runtime.settings.issuer,
        exp=int(row["expires_at"].timestamp()),
        iat=int(row["issued_at"].timestamp()),
        token_type="Bearer" if kind == "access" else "refresh_token",
        user_id=user_id,
    )


async def lookup(
    runtime: Runtime, caller: AuthenticatedClient, kind: str, token: str, request_id: str
) -> asyncpg.Record:
    """The primary's describe-and-audit row for a token of ``kind`` (``grant_id`` is None when unknown).

    For gateway mode (:mod:`broker.gateway.access`), which judges a token locally before it asks the
    upstream: the same one statement as :func:`introspect`, audit included.

    Raises:
        StaleClient: the caller's cached authentication no longer holds; nothing was written.
    """
    row = await runtime.hot.fetchrow(
        _DESCRIBE[kind],
        tokens.digest(runtime.ring.hash_key, token),
        caller.id,
        caller.updated_at,
        caller.secret_id,
        request_id,
        caller.client_id,
        _AUDIT_DETAIL[kind],
    )
    if row is None or not row["authorized"]:
        raise StaleClient
    return row


def is_live(row: asyncpg.Record) -> bool:
    """Whether a :func:`lookup` row is an unrevoked, unrotated, unexpired token of a live grant."""
    return (
        row["grant_revoked_at"] is None
        and not row["ancestor_revoked"]
        and row["token_revoked_at"] is None
        and row["rotated_at"] is None
        and row["expires_at"] > datetime.now(UTC)
    )
