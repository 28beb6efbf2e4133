"""Audit events: who did what to which grant, with the request id. Never a secret or a token."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, Identity, Index, LargeBinary, Text, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from broker.db.base import Base, server_now

XACT = "CAST(CAST(pg_current_xact_id() AS text) AS bigint)"
"""The id (64-bit, never wrapping) of the transaction writing a row."""

GLOBAL_CHAIN = uuid.UUID(int=0)
"""The chain id of events that concern no tenant (``tenant_id`` NULL: admin keys, audiences)."""


class AuditEvent(Base):
    """One audited action. ``tenant_id`` is the tenant whose data it concerns (NULL for global admin).

    An event is written once and never updated: the sealer (:mod:`broker.audit.chain`) links events
    into their tenant's hash chain in blocks (:class:`AuditBlock`), found through ``xact``, the
    transaction that wrote them. Inserting an event never touches the chain, so token issuance does not
    serialise on it. ``seq`` and ``hash`` are set only on rows sealed one by one before blocks (migration
    0005); ``xact`` is NULL on those.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index(None, "tenant_id", "occurred_at"),
        Index(None, "grant_id"),
        Index("ix_audit_events_user_id", "user_id", postgresql_where=text("user_id IS NOT NULL")),
        Index(None, "actor"),
        Index("ix_audit_events_xact", "xact", "id", postgresql_where=text("xact IS NOT NULL")),
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
    xact: Mapped[int | None] = mapped_column(BigInteger, server_default=text(XACT))


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
    blocks: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    """How many blocks the chain has (``seq`` and ``hash`` are the head of its rows sealed one by one)."""
    block_hash: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The last block's hash."""


class AuditBlock(Base):
    """Events sealed together into one chain: their ids in order, a digest of each, and the link.

    ``hash = HMAC(chain key, previous hash || seq || event ids || digests)``, where the previous hash is
    the chain's previous block's (or, for the first block, the hash of its last row sealed one by one).
    """

    __tablename__ = "audit_blocks"

    chain_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    digests: Mapped[bytes] = mapped_column(LargeBinary)
    hash: Mapped[bytes] = mapped_column(LargeBinary)
    sealed_at: Mapped[datetime] = server_now()


class AuditSealMark(Base):
    """How far sealing has got, as one row: every event before ``(xact, event_id)`` is in a block.

    Sealers lock this row, so they take turns; each round takes events of transactions that have ended.
    """

    __tablename__ = "audit_seal_mark"
    __table_args__ = (CheckConstraint("id", name="single_row"),)

    id: Mapped[bool] = mapped_column(primary_key=True, server_default=text("true"))
    xact: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    event_id: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
