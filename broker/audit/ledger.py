"""The sharing ledger of one consumer: who received, used, introspected or revoked its tokens.

It answers when, and through which grant. Derived, not stored: from the audit events about the
user (those naming it, and those of any grant whose subject it is; every derived grant inherits its
subject) and from the grants themselves (holders and parties are who *received* tokens). Nothing on
the token path writes anything extra for it.

Activities:
    * ``received``: a client got tokens about the user: the holder of an exchanged grant, or each party
      of a multi-party grant (one entry per recipient of each ``token.exchanged`` event).
    * ``shared``: the client that performed the exchange.
    * ``used``: refreshed its lineage, or forked its own lineage from a shared token.
    * ``introspected``: asked about a token (``outcome`` says whether it was shown).
    * ``revoked``: revoked a token or grant, withdrew, or was removed as a party (admins included).
    * ``refused``: a refused refresh, revocation or a replay.
    * ``consumer``: the user itself was created, updated or removed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from broker import errors
from broker.audit import events, repository
from broker.grants import service as grants
from broker.grants.service import GrantNode

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

ACTIVITIES: dict[str, str] = {
    "token.exchanged": "shared",
    "token.refreshed": "used",
    "token.party_forked": "used",
    "token.introspected": "introspected",
    "token.revoked": "revoked",
    "grant.revoked": "revoked",
    "party.withdrawn": "revoked",
    "party.removed": "revoked",
    "token.refresh_refused": "refused",
    "token.replay_detected": "refused",
    "token.revoke_refused": "refused",
    "user.created": "consumer",
    "user.updated": "consumer",
    "user.removed": "consumer",
}
COUNTED = ("received", "shared", "used", "introspected", "revoked", "refused")
DEFAULT_PAGE_SIZE = 200
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class LedgerEntry:
    """One thing one party did with (or got of) the consumer's tokens."""

    event_id: int
    at: datetime
    party: str
    activity: str
    action: str
    outcome: str
    grant_id: uuid.UUID | None
    request_id: str | None


@dataclass
class PartySummary:
    """Everything one party did, over the user's whole history (not just this page)."""

    party: str
    name: str | None
    counts: dict[str, int] = field(default_factory=dict)
    first_at: datetime | None = None
    last_at: datetime | None = None

    def add(self, activity: str, count: int, first: datetime, last: datetime) -> None:
        """Count ``count`` occurrences of ``activity`` between ``first`` and ``last``."""
        self.counts[activity] = self.counts.get(activity, 0) + count
        self.first_at = first if self.first_at is None else min(self.first_at, first)
        self.last_at = last if self.last_at is None else max(self.last_at, last)


@dataclass(frozen=True)
class Ledger:
    """The ledger of one user."""

    user_id: str
    client_user_id: str
    tenant: str
    removed_at: datetime | None
    parties: list[PartySummary]
    entries: list[LedgerEntry]
    next_after: int | None
    grants: list[GrantNode]


def _flatten(nodes: list[GrantNode]) -> dict[uuid.UUID, GrantNode]:
    found: dict[uuid.UUID, GrantNode] = {}
    stack = list(nodes)
    while stack:
        node = stack.pop()
        found[node.id] = node
        stack.extend(node.children)
    return found


def recipients(node: GrantNode) -> list[str]:
    """The clients that received a grant's tokens: its holder, or its parties."""
    if node.kind == "multi_party":
        return [p.client_id for p in node.parties]
    return [node.holder] if node.holder is not None and node.kind in {"user", "exchange"} else []


async def ledger(
    session: AsyncSession, user_id: str, *, limit: int = DEFAULT_PAGE_SIZE, after: int | None = None
) -> Ledger:
    """The user's ledger: party summaries, a page of entries (oldest first) and its grant trees.

    The caller owns the transaction.

    Raises:
        NotFound: no user has ``user_id``.
        ValidationFailed: ``limit`` out of range.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise errors.ValidationFailed(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    user = await repository.user_by_user_id(session, user_id)
    if user is None:
        raise errors.NotFound("no user with that user_id")
    trees = await grants.user_grants(session, user_id)
    nodes = _flatten(trees.grants)
    about = repository.about_user(user)

    summaries: dict[str, PartySummary] = {}

    def summary(party: str) -> PartySummary:
        return summaries.setdefault(party, PartySummary(party=party, name=None))

    for actor, action, _outcome, count, first, last in await repository.activity(session, about):
        summary(actor).add(ACTIVITIES.get(action, "other"), count, first, last)
    for node in nodes.values():
        for party in recipients(node):
            summary(party).add("received", 1, node.created_at, node.created_at)
    names = await repository.tenant_ids(session, list(summaries))
    labels = await repository.client_ids(session, list(names.values()))
    for party, tenant_id in names.items():
        summaries[party].name = labels.get(tenant_id, (party, None))[1]

    rows = await repository.events_page(session, conditions=[about], after=after, descending=False, limit=limit + 1)
    entries: list[LedgerEntry] = []
    for row in rows[:limit]:
        entries += _entries(events.view(row), nodes)
    next_after = rows[limit - 1].id if len(rows) > limit else None
    return Ledger(
        user_id=trees.user_id,
        client_user_id=trees.client_user_id,
        tenant=trees.tenant,
        removed_at=trees.removed_at,
        parties=sorted(summaries.values(), key=lambda s: (s.first_at is None, s.first_at, s.party)),
        entries=entries,
        next_after=next_after,
        grants=trees.grants,
    )


def _entries(event: events.EventView, nodes: dict[uuid.UUID, GrantNode]) -> list[LedgerEntry]:
    activity = ACTIVITIES.get(event.action, "other")
    base: dict[str, Any] = {
        "event_id": event.id,
        "at": event.occurred_at,
        "action": event.action,
        "outcome": event.outcome,
        "grant_id": event.grant_id,
        "request_id": event.request_id,
    }
    found = [LedgerEntry(party=event.actor, activity=activity, **base)]
    node = nodes.get(event.grant_id) if event.grant_id is not None else None
    if event.action == "token.exchanged" and node is not None:
        found += [LedgerEntry(party=party, activity="received", **base) for party in recipients(node)]
    return found
