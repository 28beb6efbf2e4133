"""Tenants (API clients, customers or partners) and their client secrets."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from broker.db.base import Base, server_now, uuid_pk

TENANT_KINDS = ("customer", "partner")
TENANT_STATUSES = ("active", "disabled")


class Tenant(Base):
    """An API client: ``client_id`` is public, secrets live in :class:`ClientSecret`."""

    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("kind IN ('customer', 'partner')", name="kind"),
        CheckConstraint("status IN ('active', 'disabled')", name="status"),
        CheckConstraint("access_token_ttl IS NULL OR access_token_ttl > 0", name="access_ttl"),
        CheckConstraint("refresh_token_ttl IS NULL OR refresh_token_ttl > 0", name="refresh_ttl"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    client_id: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text, default="customer")
    status: Mapped[str] = mapped_column(Text, default="active")
    allowed_scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    default_scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    access_token_ttl: Mapped[int | None]
    refresh_token_ttl: Mapped[int | None]
    created_at: Mapped[datetime] = server_now()
    updated_at: Mapped[datetime] = server_now()


class ClientSecret(Base):
    """One secret of a tenant, stored as ``hmac-sha256$<hex>``. Several may be valid during rotation."""

    __tablename__ = "client_secrets"
    __table_args__ = (Index(None, "tenant_id"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    secret_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = server_now()
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
