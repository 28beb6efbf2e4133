"""``/admin/v1/audit-events`` (filtered, keyset-paginated) and ``/admin/v1/users/{user_id}/ledger``."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request, Router, get
from litestar.params import FromPath

from broker import errors
from broker.audit import events, ledger, schemas
from broker.http import admin
from broker.http.deps import SessionDep

MAX_NUMBER_DIGITS = 18


@get("/audit-events")
async def list_events(request: Request[Any, Any, Any], session: SessionDep) -> schemas.AuditEventPage:
    def query(name: str) -> str | None:
        return admin.query_param(request, name)

    grant_id = query("grant_id")
    flt = events.EventFilter(
        client_id=query("client_id"),
        user_id=query("user_id"),
        grant_id=_uuid(grant_id, "grant_id") if grant_id else None,
        party=query("party"),
        actions=events.parse_actions(query("action")),
        outcome=_choice(query("outcome"), "outcome", ("success", "denied")),
        since=events.parse_time(query("since"), "since"),
        until=events.parse_time(query("until"), "until"),
    )
    order = _choice(query("order"), "order", ("asc", "desc")) or "desc"
    async with session.begin():
        page, next_after = await events.list_events(
            session,
            flt,
            limit=_number(query("limit"), "limit", events.DEFAULT_PAGE_SIZE),
            after=_cursor(query("after")),
            descending=order == "desc",
        )
    return schemas.AuditEventPage(
        data=[schemas.event_out(e) for e in page], next_after=str(next_after) if next_after is not None else None
    )


@get("/users/{user_id:str}/ledger")
async def user_ledger(
    user_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> schemas.LedgerOut:
    user_id = admin.path_param(user_id, "user")
    limit = _number(admin.query_param(request, "limit"), "limit", ledger.DEFAULT_PAGE_SIZE)
    after = _cursor(admin.query_param(request, "after"))
    async with session.begin():
        found = await ledger.ledger(session, user_id, limit=limit, after=after)
    return schemas.ledger_out(found)


def _number(raw: str | None, name: str, default: int) -> int:
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_NUMBER_DIGITS:
        raise errors.ValidationFailed(f"{name} must be a non-negative integer")
    return int(raw)


def _cursor(raw: str | None) -> int | None:
    return None if raw is None else _number(raw, "after", 0)


def _uuid(raw: str, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise errors.ValidationFailed(f"{name} must be a UUID") from None


def _choice(raw: str | None, name: str, choices: tuple[str, ...]) -> str | None:
    if raw is not None and raw not in choices:
        raise errors.ValidationFailed(f"{name} must be one of {', '.join(choices)}")
    return raw


router = Router(
    path=admin.PREFIX,
    guards=[admin.require_admin_key],
    route_handlers=[list_events, user_ledger],
    tags=["admin: audit"],
)
