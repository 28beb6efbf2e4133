"""Helpers for admin API tests: keys issued through the service, and quick tenant/audience set-up."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select

from broker.admin_keys import service as admin_keys
from broker.db.models import AuditEvent


async def issue_key(runtime, scope: str = "write", name: str | None = None) -> tuple[str, str]:
    """A fresh admin key: (name, bearer value)."""
    name = name or f"test-{scope}-{secrets.token_hex(4)}"
    async with runtime.sessions() as session, session.begin():
        _, value = await admin_keys.create_key(
            session, runtime.ring, name=name, scope=scope, actor="test", request_id=None
        )
    return name, value


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_urn() -> str:
    return f"urn:test:audience:{secrets.token_hex(6)}"


async def audit_events(runtime, action: str, **detail: Any) -> list[AuditEvent]:
    """Audit events with ``action`` whose detail contains ``detail``."""
    async with runtime.sessions() as session:
        result = await session.execute(
            select(AuditEvent)
            .where(AuditEvent.action == action, AuditEvent.detail.contains(detail))
            .order_by(AuditEvent.id)
        )
        return list(result.scalars())


def assert_error(response, status: int, code: str, *fragments: str) -> dict[str, Any]:
    """The response is an admin error with ``status`` and ``code`` whose message holds every fragment."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"]["code"] == code, body
    for fragment in fragments:
        assert fragment in body["error"]["message"], body
    assert body["request_id"] == response.headers["x-request-id"]
    return body
