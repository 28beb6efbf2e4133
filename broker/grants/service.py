"""Grants admin: lineage trees of a user's or a tenant's grants; revoking a grant; removing one party.

Invariants:
    * A tree shows a grant and every descendant (exchanges, party lineages), found through the
      GIN-indexed ``path``; a node is live only if it and every ancestor are unrevoked (the same rule
      token validation uses).
    * Revoking a grant revokes it and every descendant in one statement
      (:func:`broker.oauth.repository.revoke_subtree`); revoking a revoked grant changes nothing.
    * Removing a party from a multi-party grant withdraws that party and revokes only the lineages it
      forked; the shared grant and the other parties' lineages are untouched, and nothing is reissued.
    * Every change is audited with the admin as actor, and reported to the partners' webhooks
      (``grant.revoked``, ``party.removed``) through the outbox, in the transaction that makes it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from broker import errors
from broker.audit import service as audit
from broker.gateway import held
from broker.grants import repository
from broker.oauth import repository as oauth_repository
from broker.webhooks import outbox

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing
    from broker.db.models import Grant, GrantParty

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
AUDITED_IDS = 100


@dataclass(frozen=True)
class PartyView:
    """One party of a multi-party grant."""

    client_id: str
    via: str
    withdrawn_at: datetime | None


@dataclass
class GrantNode:
    """A grant with its descendants."""

    id: uuid.UUID
    kind: str
    owner: str
    requester: str
    holder: str | None
    user_id: str | None
    parent_id: uuid.UUID | None
    scopes: list[str]
    audience: str
    resource: str | None
    created_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None
    live: bool
    parties: list[PartyView] = field(default_factory=list)
    children: list[GrantNode] = field(default_factory=list)


async def _forest(session: AsyncSession, grants: list[Grant], *, dead_above: set[uuid.UUID]) -> list[GrantNode]:
    """Assemble grants into trees; ``dead_above`` holds roots whose ancestors (outside the list) are revoked."""
    names = await repository.client_ids(
        session, [t for g in grants for t in (g.tenant_id, g.requester_tenant_id, g.holder_tenant_id) if t]
    )
    party_rows: list[GrantParty] = await repository.parties(session, [g.id for g in grants if g.kind == "multi_party"])
    names |= await repository.client_ids(session, [p.tenant_id for p in party_rows])
    users = await repository.user_ids(session, [g.user_pk for g in grants if g.user_pk])
    parties: dict[uuid.UUID, list[PartyView]] = {}
    for party in party_rows:
        parties.setdefault(party.grant_id, []).append(
            PartyView(names.get(party.tenant_id, "?"), party.via, party.withdrawn_at)
        )
    nodes: dict[uuid.UUID, GrantNode] = {}
    for grant in grants:
        nodes[grant.id] = GrantNode(
            id=grant.id,
            kind=grant.kind,
            owner=names.get(grant.tenant_id, "?"),
            requester=names.get(grant.requester_tenant_id, "?"),
            holder=names.get(grant.holder_tenant_id) if grant.holder_tenant_id else None,
            user_id=users.get(grant.user_pk) if grant.user_pk else None,
            parent_id=grant.parent_id,
            scopes=list(grant.scopes),
            audience=grant.audience,
            resource=grant.resource,
            created_at=grant.created_at,
            revoked_at=grant.revoked_at,
            revoked_reason=grant.revoked_reason,
            live=grant.revoked_at is None,
            parties=parties.get(grant.id, []),
        )
    roots: list[GrantNode] = []
    for node in nodes.values():
        parent = nodes.get(node.parent_id) if node.parent_id else None
        if parent is None:
            roots.append(node)
        else:
            parent.children.append(node)
    for root in roots:
        _propagate(root, alive=root.id not in dead_above)
    return roots


def _propagate(node: GrantNode, *, alive: bool) -> None:
    node.live = node.live and alive
    for child in node.children:
        _propagate(child, alive=node.live)


@dataclass(frozen=True)
class UserGrants:
    """A user and every grant about it."""

    user_id: str
    client_user_id: str
    tenant: str
    removed_at: datetime | None
    grants: list[GrantNode]


async def user_grants(session: AsyncSession, user_id: str) -> UserGrants:
    """Every grant whose subject is the user, as lineage trees. Caller owns the transaction.

    Raises:
        NotFound: no user has ``user_id``.
    """
    user = await repository.user_by_user_id(session, user_id)
    if user is None:
        raise errors.NotFound("no user with that user_id")
    grants = await repository.of_user(session, user.tenant_id, user.id)
    tenant = await repository.client_ids(session, [user.tenant_id])
    return UserGrants(
        user_id=user.user_id,
        client_user_id=user.client_user_id,
        tenant=tenant.get(user.tenant_id, "?"),
        removed_at=user.removed_at,
        grants=await _forest(session, grants, dead_above=set()),
    )


async def tenant_grants(
    session: AsyncSession, client_id: str, *, limit: int = DEFAULT_PAGE_SIZE, after: str | None, live: bool | None
) -> tuple[list[GrantNode], str | None]:
    """A page of the trees a tenant owns, newest root first. Caller owns the transaction.

    Returns:
        The trees and the cursor of the next page (None on the last).

    Raises:
        NotFound: no tenant has ``client_id``.
        ValidationFailed: a bad ``limit`` or cursor.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise errors.ValidationFailed(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    tenant = await repository.tenant_by_client_id(session, client_id)
    if tenant is None:
        raise errors.NotFound("no tenant with that client_id")
    roots = await repository.tenant_roots(session, tenant.id, before=_cursor(after), limit=limit + 1, live=live)
    page = roots[:limit]
    trees = await _forest(session, await repository.subtrees(session, [g.id for g in page]), dead_above=set())
    order = {g.id: i for i, g in enumerate(page)}
    trees.sort(key=lambda node: order.get(node.id, len(order)))
    next_after = f"{page[-1].created_at.isoformat()}_{page[-1].id}" if len(roots) > limit else None
    return trees, next_after


def _cursor(after: str | None) -> tuple[datetime, uuid.UUID] | None:
    if after is None:
        return None
    created, _, grant_id = after.rpartition("_")
    try:
        return datetime.fromisoformat(created), uuid.UUID(grant_id)
    except ValueError:
        raise errors.ValidationFailed("after must be the next_after of a previous page") from None


async def grant_tree(session: AsyncSession, grant_id: uuid.UUID) -> GrantNode:
    """One grant and its descendants. Caller owns the transaction.

    Raises:
        NotFound: no such grant.
    """
    grant = await repository.by_id(session, grant_id)
    if grant is None:
        raise errors.NotFound("no grant with that id")
    dead = {grant.id} if await repository.ancestor_revoked(session, grant) else set()
    trees = await _forest(session, await repository.subtrees(session, [grant.id]), dead_above=dead)
    return next(tree for tree in trees if tree.id == grant.id)


async def revoke_grant(
    session: AsyncSession, ring: KeyRing, grant_id: uuid.UUID, *, actor: str, request_id: str | None
) -> list[uuid.UUID]:
    """Revoke a grant and every descendant; return the ids newly revoked. Caller owns the transaction.

    Raises:
        NotFound: no such grant.
    """
    grant = await repository.by_id(session, grant_id)
    if grant is None:
        raise errors.NotFound("no grant with that id")
    revoked = await oauth_repository.revoke_subtree(session, grant.id, "admin.revoked", datetime.now(UTC))
    if revoked:
        await audit.record(
            session,
            action="grant.revoked",
            actor=actor,
            tenant_id=grant.tenant_id,
            request_id=request_id,
            grant_id=grant.id,
            detail=_summary(revoked) | {"reason": "admin.revoked"},
        )
        await outbox.grants_revoked(session, ring, revoked, reason="admin.revoked", grant_id=grant.id)
        # Gateway grants: revoke upstream too, as the client that holds it there (the outbox retries).
        await held.queue_revocation(
            session,
            ring,
            grant.id,
            as_tenant=grant.holder_tenant_id or grant.requester_tenant_id,
            request_id=request_id,
        )
    return revoked


async def remove_party(
    session: AsyncSession, ring: KeyRing, grant_id: uuid.UUID, client_id: str, *, actor: str, request_id: str | None
) -> list[uuid.UUID]:
    """Withdraw one party from a multi-party grant and revoke only its lineages. Caller owns the transaction.

    Returns:
        The ids of the party lineages revoked.

    Raises:
        NotFound: no such multi-party grant, or the client is not an active party of it.
    """
    grant = await repository.by_id(session, grant_id, lock=True)
    if grant is None or grant.kind != "multi_party":
        raise errors.NotFound("no multi-party grant with that id")
    tenant = await repository.tenant_by_client_id(session, client_id)
    now = datetime.now(UTC)
    if tenant is None or not await oauth_repository.withdraw_party(session, grant.id, tenant.id, now):
        raise errors.NotFound("that client is not an active party of this grant")
    revoked: list[uuid.UUID] = []
    for lineage in await oauth_repository.party_grants(session, grant.id, tenant.id):
        revoked += await oauth_repository.revoke_subtree(session, lineage, "party.removed", now)
    await audit.record(
        session,
        action="party.removed",
        actor=actor,
        tenant_id=grant.tenant_id,
        request_id=request_id,
        grant_id=grant.id,
        detail={"party": client_id, **_summary(revoked)},
    )
    await outbox.party_removed(
        session,
        ring,
        grant_id=grant.id,
        party_tenant_id=tenant.id,
        party=client_id,
        reason="removed",
        revoked=revoked,
        notify=(grant.tenant_id, grant.requester_tenant_id),
    )
    await outbox.grants_revoked(session, ring, revoked, reason="party.removed", grant_id=grant.id)
    # Gateway grants: the party withdraws its share upstream too (its credentials, the shared token).
    await held.queue_revocation(session, ring, grant.id, as_tenant=tenant.id, request_id=request_id)
    return revoked


def _summary(revoked: list[uuid.UUID]) -> dict[str, object]:
    return {"revoked_count": len(revoked), "revoked_grants": [str(g) for g in revoked[:AUDITED_IDS]]}
