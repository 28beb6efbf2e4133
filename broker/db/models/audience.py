"""CRA-partner audiences, the partner clients acting for them, and per-tenant audience policies."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from broker.db.base import Base, server_now, uuid_pk


class Audience(Base):
    """A named audience such as ``urn:plaid:params:cra-partner:experian``."""

    __tablename__ = "audiences"

    id: Mapped[uuid.UUID] = uuid_pk()
    urn: Mapped[str] = mapped_column(Text, unique=True)
    display_name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = server_now()
    updated_at: Mapped[datetime] = server_now()


class AudienceMember(Base):
    """A partner client (tenant) that acts for an audience: it becomes a party of tokens sent there."""

    __tablename__ = "audience_members"
    __table_args__ = (Index(None, "tenant_id"),)

    audience_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("audiences.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = server_now()


class AudiencePolicy(Base):
    """Allows ``tenant_id`` to exchange toward one audience URN or one client, with scopes and lifetimes."""

    __tablename__ = "audience_policies"
    __table_args__ = (
        CheckConstraint("(audience_id IS NULL) <> (target_tenant_id IS NULL)", name="one_target"),
        UniqueConstraint("tenant_id", "audience_id"),
        UniqueConstraint("tenant_id", "target_tenant_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    audience_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("audiences.id", ondelete="CASCADE"))
    target_tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    allowed_scopes: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    access_token_ttl: Mapped[int | None]
    refresh_token_ttl: Mapped[int | None]
    webhook_include_refresh_token: Mapped[bool] = mapped_column(server_default=text("false"))
    """Whether ``grant.shared`` webhooks to this target's parties carry the shared refresh token (sealed)."""
    created_at: Mapped[datetime] = server_now()
    updated_at: Mapped[datetime] = server_now()
