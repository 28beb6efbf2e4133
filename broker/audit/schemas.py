"""Admin API bodies for the audit log and the sharing ledger."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from broker.grants.schemas import GrantOut, grant_out

if TYPE_CHECKING:
    from broker.audit.events import EventView
    from broker.audit.ledger import Ledger


class AuditEventOut(msgspec.Struct):
    id: int
    occurred_at: datetime
    tenant: str | None
    """The client id of the tenant whose data the event concerns; null for global admin events."""
    actor: str
    action: str
    outcome: str
    request_id: str | None
    grant_id: uuid.UUID | None
    user_id: str | None
    detail: dict[str, Any]
    sealed: bool
    """Whether the event is linked into its tenant's hash chain yet (within seconds of being written)."""


class AuditEventPage(msgspec.Struct):
    data: list[AuditEventOut]
    next_after: str | None
    """Pass as ``after`` for the next page; null on the last page."""


class LedgerEntryOut(msgspec.Struct):
    event_id: int
    at: datetime
    party: str
    activity: str
    action: str
    outcome: str
    grant_id: uuid.UUID | None
    request_id: str | None


class PartySummaryOut(msgspec.Struct):
    party: str
    name: str | None
    counts: dict[str, int]
    first_at: datetime | None
    last_at: datetime | None


class LedgerOut(msgspec.Struct):
    user_id: str
    client_user_id: str
    tenant: str
    removed_at: datetime | None
    parties: list[PartySummaryOut]
    entries: list[LedgerEntryOut]
    next_after: str | None
    grants: list[GrantOut]


def event_out(event: EventView) -> AuditEventOut:
    return AuditEventOut(
        id=event.id,
        occurred_at=event.occurred_at,
        tenant=event.tenant,
        actor=event.actor,
        action=event.action,
        outcome=event.outcome,
        request_id=event.request_id,
        grant_id=event.grant_id,
        user_id=event.user_id,
        detail=event.detail,
        sealed=event.sealed,
    )


def ledger_out(ledger: Ledger) -> LedgerOut:
    return LedgerOut(
        user_id=ledger.user_id,
        client_user_id=ledger.client_user_id,
        tenant=ledger.tenant,
        removed_at=ledger.removed_at,
        parties=[PartySummaryOut(s.party, s.name, s.counts, s.first_at, s.last_at) for s in ledger.parties],
        entries=[
            LedgerEntryOut(e.event_id, e.at, e.party, e.activity, e.action, e.outcome, e.grant_id, e.request_id)
            for e in ledger.entries
        ],
        next_after=str(ledger.next_after) if ledger.next_after is not None else None,
        grants=[grant_out(g) for g in ledger.grants],
    )
