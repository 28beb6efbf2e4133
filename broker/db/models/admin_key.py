"""Admin API keys, stored as keyed digests."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, LargeBinary, Text
from sqlalchemy.orm import Mapped, mapped_column

from broker.db.base import Base, server_now, uuid_pk


class AdminKey(Base):
    """A bearer key for ``/admin/v1``; ``scope`` is ``write`` (everything) or ``read``."""

    __tablename__ = "admin_keys"
    __table_args__ = (CheckConstraint("scope IN ('read', 'write')", name="scope"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(Text)
    digest: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    scope: Mapped[str] = mapped_column(Text, default="write")
    created_at: Mapped[datetime] = server_now()
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
