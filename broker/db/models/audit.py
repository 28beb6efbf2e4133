"""Audit events: who did what to which grant, with the request id. Never a secret or a token."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Identity, Index, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from broker.db.base import Base, server_now


class AuditEvent(Base):
    """One audited action. ``tenant_id`` is the tenant whose data it concerns (NULL for global admin)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index(None, "tenant_id", "occurred_at"), Index(None, "grant_id"))

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[uuid.UUID | None]
    occurred_at: Mapped[datetime] = server_now()
    request_id: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(Text, default="success")
    grant_id: Mapped[uuid.UUID | None]
    user_id: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
