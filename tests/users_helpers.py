"""Helpers shared by the ``/user/*`` tests."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select

from broker.db.models import Grant, User

PLAID_ERROR_FIELDS = {"error_type", "error_code", "error_message", "display_message", "request_id"}


async def call(client: Any, path: str, who: Any = None, **body: Any) -> Any:
    """POST ``body`` as JSON with ``who``'s credentials in the PLAID-* headers."""
    headers = who.headers if who is not None else {}
    return await client.post(path, json=body, headers=headers)


def assert_plaid_error(response: Any, error_type: str, error_code: str, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= PLAID_ERROR_FIELDS, body
    assert body["error_type"] == error_type, body
    assert body["error_code"] == error_code, body
    assert isinstance(body["error_message"], str)
    assert body["error_message"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def assert_ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def create_user(client: Any, who: Any, client_user_id: str | None = None, **extra: Any) -> dict[str, Any]:
    client_user_id = client_user_id or f"cu-{uuid.uuid4().hex[:12]}"
    return assert_ok(await call(client, "/user/create", who, client_user_id=client_user_id, **extra))


async def user_row(sessions: Any, user_id: str) -> User:
    async with sessions() as session:
        result = await session.execute(select(User).where(User.user_id == user_id))
        user: User = result.scalar_one()
        return user


async def add_grant(
    sessions: Any,
    tenant_id: uuid.UUID,
    user_pk: uuid.UUID | None,
    *,
    parent: Grant | None = None,
    kind: str = "user",
    revoked_reason: str | None = None,
) -> Grant:
    """Insert a grant directly, as the token flows would (children inherit tenant, user and path)."""
    grant = Grant(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        kind=kind,
        requester_tenant_id=tenant_id,
        holder_tenant_id=tenant_id,
        parent_id=parent.id if parent else None,
        path=[*parent.path, parent.id] if parent else [],
        user_pk=user_pk,
        scopes=["user:read"],
        audience="test",
        access_token_ttl=900,
        refresh_token_ttl=86_400,
    )
    async with sessions() as session, session.begin():
        session.add(grant)
        if revoked_reason is not None:
            await session.flush()
            grant.revoked_at = await _now(session)
            grant.revoked_reason = revoked_reason
    return grant


async def _now(session: Any) -> Any:
    return (await session.execute(select(func.now()))).scalar_one()


async def grant_state(sessions: Any, grant_id: uuid.UUID) -> tuple[Any, str | None]:
    async with sessions() as session:
        row = (await session.execute(select(Grant.revoked_at, Grant.revoked_reason).where(Grant.id == grant_id))).one()
        return row[0], row[1]
