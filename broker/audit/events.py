"""Reading the audit log: filters, keyset pagination, and the shape events are shown in.

Filters combine with AND. ``user_id`` matches events that name the user or concern any grant whose
subject is the user (refreshes and forks are audited by grant); ``party`` matches events a client
performed or that concern a grant it holds or is a party of.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_

from broker import errors
from broker.audit import repository
from broker.db.models import AuditEvent

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
MAX_ACTIONS = 20
_ACTION = re.compile(r"^[a-z_]+(\.[a-z_]+)*(\.\*)?$")


@dataclass(frozen=True)
class EventFilter:
    """What to select; every field is optional."""

    client_id: str | None = None
    user_id: str | None = None
    grant_id: uuid.UUID | None = None
    party: str | None = None
    actions: tuple[str, ...] = ()
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class EventView:
    """One audit event as the API shows it."""

    id: int
    occurred_at: datetime
    tenant: str | None
    actor: str
    action: str
    outcome: str
    request_id: str | None
    grant_id: uuid.UUID | None
    user_id: str | None
    detail: dict[str, Any]
    sealed: bool
    """Whether the event is linked into its tenant's hash chain yet (within seconds of being written)."""


def parse_time(raw: str | None, name: str) -> datetime | None:
    """An ISO 8601 instant (naive values are UTC).

    Raises:
        ValidationFailed: not an ISO 8601 date or date-time.
    """
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise errors.ValidationFailed(f"{name} must be an ISO 8601 date-time") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse_actions(raw: str | None) -> tuple[str, ...]:
    """A comma list of event types; ``token.*`` matches every ``token.`` type.

    Raises:
        ValidationFailed: malformed or too many.
    """
    if raw is None:
        return ()
    actions = tuple(part.strip() for part in raw.split(",") if part.strip())
    if len(actions) > MAX_ACTIONS or not all(_ACTION.match(a) for a in actions):
        raise errors.ValidationFailed("action must be a comma list of event types such as token.refreshed or token.*")
    return actions


async def conditions(session: AsyncSession, flt: EventFilter) -> list[Any]:
    """SQL conditions for ``flt``.

    Raises:
        NotFound: an unknown tenant, party or user.
    """
    found: list[Any] = []
    names = [n for n in (flt.client_id, flt.party) if n is not None]
    tenants = await repository.tenant_ids(session, names)
    if flt.client_id is not None:
        if flt.client_id not in tenants:
            raise errors.NotFound("no tenant with that client_id")
        found.append(AuditEvent.tenant_id == tenants[flt.client_id])
    if flt.party is not None:
        if flt.party not in tenants:
            raise errors.NotFound("no tenant with that party client_id")
        found.append(repository.about_party(tenants[flt.party], flt.party))
    if flt.user_id is not None:
        user = await repository.user_by_user_id(session, flt.user_id)
        if user is None:
            raise errors.NotFound("no user with that user_id")
        found.append(repository.about_user(user))
    if flt.grant_id is not None:
        found.append(AuditEvent.grant_id == flt.grant_id)
    if flt.actions:
        exact = [a for a in flt.actions if not a.endswith(".*")]
        prefixes = [a[:-1] for a in flt.actions if a.endswith(".*")]
        matches: list[Any] = [AuditEvent.action.in_(exact)] if exact else []
        matches += [AuditEvent.action.startswith(p, autoescape=True) for p in prefixes]
        found.append(or_(*matches))
    if flt.outcome is not None:
        found.append(AuditEvent.outcome == flt.outcome)
    found += repository.occurred_between(flt.since, flt.until)
    return found


async def list_events(
    session: AsyncSession,
    flt: EventFilter,
    *,
    limit: int = DEFAULT_PAGE_SIZE,
    after: int | None = None,
    descending: bool = True,
) -> tuple[list[EventView], int | None]:
    """One page of events (newest first unless ``descending`` is False). Caller owns the transaction.

    Returns:
        The events and the cursor of the next page (pass it as ``after``), None on the last page.

    Raises:
        ValidationFailed: ``limit`` out of range.
        NotFound: an unknown tenant, party or user in the filter.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise errors.ValidationFailed(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    rows = await repository.events_page(
        session, conditions=await conditions(session, flt), after=after, descending=descending, limit=limit + 1
    )
    page = [view(row) for row in rows[:limit]]
    return page, page[-1].id if len(rows) > limit else None


def view(row: Any) -> EventView:  # noqa: ANN401 - a result row of audit columns and client_id
    """The API view of an event row."""
    return EventView(
        id=row.id,
        occurred_at=row.occurred_at,
        tenant=row.client_id,
        actor=row.actor,
        action=row.action,
        outcome=row.outcome,
        request_id=row.request_id,
        grant_id=row.grant_id,
        user_id=row.user_id,
        detail=row.detail,
        sealed=row.sealed,
    )
