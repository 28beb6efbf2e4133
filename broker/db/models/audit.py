"""Audit events: who did what to which grant, with the request id. Never a secret or a token."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Identity, Index, LargeBinary, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from broker.db.base import Base, server_now

GLOBAL_CHAIN = uuid.UUID(int=0)
"""The chain id of events that concern no tenant (``tenant_id`` NULL: admin keys, audiences)."""


class AuditEvent(Base):
    """One audited action. ``tenant_id`` is the tenant whose data it concerns (NULL for global admin).

    ``seq`` and ``hash`` are NULL until the sealer links the row into its tenant's hash chain
    (:mod:`broker.audit.chain`); inserting an event never touches the chain, so token issuance does not
    serialise on it.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index(None, "tenant_id", "occurred_at"),
        Index(None, "grant_id"),
        Index("ix_audit_events_user_id", "user_id", postgresql_where=text("user_id IS NOT NULL")),
        Index(None, "actor"),
        Index("ix_audit_events_unsealed", "tenant_id", "id", postgresql_where=text("seq IS NULL")),
        Index("ix_audit_events_chain", "tenant_id", "seq", postgresql_where=text("seq IS NOT NULL")),
    )

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
    seq: Mapped[int | None] = mapped_column(BigInteger)
    hash: Mapped[bytes | None] = mapped_column(LargeBinary)


class AuditChain(Base):
    """The head of one tenant's audit hash chain (``chain_id`` is the tenant id, or :data:`GLOBAL_CHAIN`).

    Sealing locks this row, so two sealers never extend one chain at once; the head also lets
    ``broker audit verify`` notice rows deleted from the end of a chain.
    """

    __tablename__ = "audit_chains"

    chain_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    hash: Mapped[bytes | None] = mapped_column(LargeBinary)
    sealed_at: Mapped[datetime] = server_now()
