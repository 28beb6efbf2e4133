"""Users: the consumers that tokens are about. User tokens and identity data are encrypted."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from broker.db.base import Base, server_now, uuid_pk

V1_ROWS = "user_token_enc LIKE 'v1.%' OR identity_enc LIKE 'v1.%'"


class User(Base):
    """A tenant's user. ``user_token`` is found by digest and kept sealed; removal leaves a tombstone."""

    __tablename__ = "users"
    __table_args__ = (
        Index(
            "uq_users_tenant_id_client_user_id_live",
            "tenant_id",
            "client_user_id",
            unique=True,
            postgresql_where=text("removed_at IS NULL"),
        ),
        # Rows still sealed directly under a ring key (see ``RefreshToken``).
        Index("ix_users_v1", "id", postgresql_where=text(V1_ROWS)),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(Text, unique=True)
    client_user_id: Mapped[str] = mapped_column(Text)
    user_token_digest: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    user_token_enc: Mapped[str] = mapped_column(Text)
    identity_enc: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = server_now()
    updated_at: Mapped[datetime | None]
    removed_at: Mapped[datetime | None]
