"""Token introspection (RFC 7662 §2) with Plaid's response fields.

Invariants:
    * Only the token's owner tenant, its requester, its holder and its active parties see
      ``active: true``; anyone else, and any unknown, expired, revoked or rotated token, gets
      ``{active: false}`` and learns nothing else (RFC 7662 §2.2).
    * ``aud`` is always a string (the comma-joined parties, the target client, or the resource):
      plaid-python rejects an array.
    * An introspection by anyone but the owner tenant is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker.audit import service as audit
from broker.crypto import tokens
from broker.oauth import repository
from broker.oauth.flows.base import grant_is_live

if TYPE_CHECKING:
    from sqlalchemy.engine import Row
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.db.models import Tenant


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


async def describe(session: AsyncSession, runtime: Runtime, caller: Tenant, token: str) -> tuple[str, Row[Any]] | None:
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


def visible_to(row: Row[Any], caller: Tenant) -> bool:
    """Whether ``caller`` is the owner, requester, holder or an active party of the token's grant."""
    grant = row.Grant
    return caller.id in {grant.tenant_id, grant.requester_tenant_id, grant.holder_tenant_id} or bool(
        row.caller_is_party
    )


async def introspect(
    session: AsyncSession, runtime: Runtime, caller: Tenant, token: str, request_id: str
) -> Introspection | None:
    """Describe ``token`` to ``caller``, or None when it must be reported inactive."""
    now = datetime.now(UTC)
    async with session.begin():
        found = await describe(session, runtime, caller, token)
        if found is None:
            return None
        kind, row = found
        grant = row.Grant
        visible = visible_to(row, caller)
        if caller.id != grant.tenant_id:
            await audit.record(
                session,
                action="token.introspected",
                actor=caller.client_id,
                tenant_id=grant.tenant_id,
                request_id=request_id,
                grant_id=grant.id,
                user_id=row.user_id,
                outcome="success" if visible else "denied",
                detail={"token_kind": kind},
            )
    if not visible:
        return None
    live = grant_is_live(grant, row.ancestor_revoked) and row.token_revoked_at is None and row.expires_at > now
    if kind == "refresh" and row.rotated_at is not None:
        live = False
    if not live:
        return None
    client_id = row.holder_client_id or row.requester_client_id
    scopes = row.token_scopes if kind == "access" else grant.scopes
    return Introspection(
        scope=" ".join(scopes),
        client_id=client_id,
        sub=row.user_id or client_id,
        aud=grant.audience,
        iss=runtime.settings.issuer,
        exp=int(row.expires_at.timestamp()),
        iat=int(row.issued_at.timestamp()),
        token_type="Bearer" if kind == "access" else "refresh_token",
        user_id=row.user_id,
    )
