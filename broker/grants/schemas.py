"""Admin API bodies for grants: lineage trees and the results of revocations."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from broker.grants.service import GrantNode


class PartyOut(msgspec.Struct):
    client_id: str
    via: str
    withdrawn_at: datetime | None


class GrantOut(msgspec.Struct):
    id: uuid.UUID
    kind: str
    owner: str
    """The client whose data the grant is about (the lender)."""
    requester: str
    holder: str | None
    """The client that uses the grant's tokens; null for a multi-party grant (see ``parties``)."""
    user_id: str | None
    parent_id: uuid.UUID | None
    scopes: list[str]
    audience: str
    resource: str | None
    created_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None
    live: bool
    """Unrevoked, and so is every ancestor."""
    parties: list[PartyOut]
    children: list[GrantOut]


class UserGrantsOut(msgspec.Struct):
    user_id: str
    client_user_id: str
    tenant: str
    removed_at: datetime | None
    grants: list[GrantOut]


class GrantPage(msgspec.Struct):
    data: list[GrantOut]
    next_after: str | None


class RevokedOut(msgspec.Struct):
    grant_id: uuid.UUID
    revoked_count: int
    revoked_grants: list[uuid.UUID]


def grant_out(node: GrantNode) -> GrantOut:
    return GrantOut(
        id=node.id,
        kind=node.kind,
        owner=node.owner,
        requester=node.requester,
        holder=node.holder,
        user_id=node.user_id,
        parent_id=node.parent_id,
        scopes=node.scopes,
        audience=node.audience,
        resource=node.resource,
        created_at=node.created_at,
        revoked_at=node.revoked_at,
        revoked_reason=node.revoked_reason,
        live=node.live,
        parties=[PartyOut(p.client_id, p.via, p.withdrawn_at) for p in node.parties],
        children=[grant_out(child) for child in node.children],
    )
