"""Token revocation (RFC 7009 §2) with lineage cascade.

Invariants:
    * Revoking a refresh token revokes its grant and every descendant grant (refresh successors live
      in the same grant; exchanged children and party lineages are descendants) in one transaction,
      also when the presented token was already rotated.
    * Revoking an access token revokes only that token.
    * A party (not the owner or requester) revoking a shared multi-party token, access or refresh,
      withdraws only its own share: its party lineages die and it can no longer fork; the other parties
      keep theirs.
    * Unknown tokens and tokens the caller may not touch get the same 200 (RFC 7009 §2.2); a refused
      attempt changes nothing and is audited.
    * Webhooks are queued in the same transaction: ``grant.revoked`` to every holder and party of the
      revoked grants (listing them all), and ``party.removed`` when a party withdraws.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker.audit import service as audit
from broker.crypto import tokens
from broker.oauth import repository
from broker.oauth.introspection import describe, visible_to
from broker.webhooks import outbox

if TYPE_CHECKING:
    import uuid
    from collections.abc import Awaitable, Callable

    from sqlalchemy.engine import Row
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.tenants.clients import AuthenticatedClient

    Applied = Callable[[AsyncSession, str, Row[Any]], Awaitable[None]]
    """Called inside the revoking transaction once a revocation applied: (session, token kind, token row)."""

AUDITED_IDS = 100


async def revoke(
    session: AsyncSession,
    runtime: Runtime,
    caller: AuthenticatedClient,
    token: str,
    request_id: str,
    *,
    on_applied: Applied | None = None,
) -> str:
    """Revoke ``token`` on behalf of ``caller`` (see the module invariants).

    Returns:
        ``unknown`` (no such token), ``refused`` (the caller may not touch it) or ``applied``.
        ``on_applied`` runs in the same transaction in the last case (gateway mode queues the upstream
        revocation there, so it commits with the local one).
    """
    now = datetime.now(UTC)
    async with session.begin():
        found = await describe(session, runtime, caller, token)
        if found is None:
            return "unknown"
        kind, row = found
        grant = row.Grant
        base = {
            "actor": caller.client_id,
            "tenant_id": grant.tenant_id,
            "request_id": request_id,
            "user_id": row.user_id,
        }
        if not visible_to(row, caller):
            await audit.record(session, action="token.revoke_refused", grant_id=grant.id, outcome="denied", **base)
            return "refused"
        if on_applied is not None:
            await on_applied(session, kind, row)
        owner = caller.id in {grant.tenant_id, grant.requester_tenant_id}
        if grant.kind == "multi_party" and not owner:
            withdrawn = await repository.withdraw_party(session, grant.id, caller.id, now)
            revoked: list[uuid.UUID] = []
            for party_grant in await repository.party_grants(session, grant.id, caller.id):
                revoked += await repository.revoke_subtree(session, party_grant, "party.withdrawn", now)
            detail = {"token_kind": kind, **_summary(revoked)}
            await audit.record(session, action="party.withdrawn", grant_id=grant.id, detail=detail, **base)
            if withdrawn:
                notify = (grant.tenant_id, grant.requester_tenant_id)
                await outbox.party_removed(
                    session,
                    runtime.ring,
                    grant_id=grant.id,
                    party_tenant_id=caller.id,
                    party=caller.client_id,
                    reason="withdrawn",
                    revoked=revoked,
                    notify=notify,
                )
            await outbox.grants_revoked(session, runtime.ring, revoked, reason="party.withdrawn", grant_id=grant.id)
            return "applied"
        if kind == "access":
            await repository.revoke_access(session, tokens.digest(runtime.ring.hash_key, token), now)
            await audit.record(session, action="token.revoked", grant_id=grant.id, detail={"token_kind": kind}, **base)
            return "applied"
        revoked = await repository.revoke_subtree(session, grant.id, "token.revoked", now)
        detail = {"token_kind": kind, **_summary(revoked)}
        await audit.record(session, action="grant.revoked", grant_id=grant.id, detail=detail, **base)
        await outbox.grants_revoked(session, runtime.ring, revoked, reason="token.revoked", grant_id=grant.id)
    return "applied"


def _summary(revoked: list[uuid.UUID]) -> dict[str, Any]:
    """Audit detail for a cascade: the count and at most the first hundred grant ids."""
    return {"revoked_count": len(revoked), "revoked_grants": [str(g) for g in revoked[:AUDITED_IDS]]}
