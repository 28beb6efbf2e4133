"""Access and refresh tokens, found by keyed digest. Refresh tokens are also sealed (AES-256-GCM)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, Text, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from broker.db.base import Base, server_now, uuid_pk

V1_ROWS = "token_enc LIKE 'v1.%' OR retry_pair_enc LIKE 'v1.%'"


class RefreshToken(Base):
    """A refresh token of a grant.

    Rotation: using a token sets ``rotated_at`` and ``successor_id`` and keeps the successor pair sealed in
    ``retry_pair_enc`` for the grace window, so a client that lost the response can retry and get the same
    pair. Multi-party shared tokens (grant kind ``multi_party``) never rotate.
    """

    __tablename__ = "refresh_tokens"
    __table_args__ = (
        Index(None, "tenant_id", "grant_id"),
        Index(None, "grant_id"),
        # Rows still sealed directly under a ring key (written before tenant data keys): empty once
        # `broker keys reencrypt` has run, it lets re-encryption and key checks find them without a scan.
        Index("ix_refresh_tokens_v1", "id", postgresql_where=text(V1_ROWS)),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    grant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("grants.id", ondelete="CASCADE"))
    digest: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    token_enc: Mapped[str] = mapped_column(Text)
    parent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("refresh_tokens.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = server_now()
    expires_at: Mapped[datetime]
    rotated_at: Mapped[datetime | None]
    successor_id: Mapped[uuid.UUID | None]
    retry_pair_enc: Mapped[str | None] = mapped_column(Text)
    revoked_at: Mapped[datetime | None]


class AccessToken(Base):
    """An access token: only its digest is stored."""

    __tablename__ = "access_tokens"
    __table_args__ = (Index(None, "tenant_id", "grant_id"), Index(None, "grant_id"))

    digest: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    grant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("grants.id", ondelete="CASCADE"))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime] = server_now()
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
