"""Tenant data keys (DEKs), stored wrapped by the configured key ring; never the ring's own keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from broker.db.base import Base, server_now, uuid_pk


class TenantKey(Base):
    """One data key of a tenant. ``wrapped`` is a ``v1`` envelope naming the ring key that wraps it.

    Invariants:
        * At most one live (unshredded) key per tenant: the partial unique index.
        * Shredding sets ``shredded_at`` and destroys ``wrapped`` in the same statement (the check
          constraint), so a shredded key can never be unwrapped again; the row stays as a tombstone so
          ``v2`` envelopes that name it are reported as shredded rather than unknown.
    """

    __tablename__ = "tenant_keys"
    __table_args__ = (
        CheckConstraint("(wrapped IS NULL) = (shredded_at IS NOT NULL)", name="wrapped_unless_shredded"),
        Index(
            "uq_tenant_keys_tenant_id_live",
            "tenant_id",
            unique=True,
            postgresql_where=text("shredded_at IS NULL"),
        ),
        Index(None, "tenant_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    wrapped: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = server_now()
    shredded_at: Mapped[datetime | None]
