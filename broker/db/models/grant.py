"""Grants: the authorizations tokens are issued under, with lineage (parent, path) and parties."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Text, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Mapped, mapped_column

from broker.db.base import Base, server_now, uuid_pk

GRANT_KINDS = ("client_credentials", "user", "exchange", "multi_party", "party")


class Grant(Base):
    """One authorization.

    Invariants:
        * ``tenant_id`` is the tenant that owns the data (the lender); every descendant inherits it.
        * ``path`` lists every ancestor id, root first. A grant is live only if it and every grant in its
          path are unrevoked, so a child created while an ancestor is being revoked can never outlive it.
        * ``requester_tenant_id`` is the client that asked for the grant; ``holder_tenant_id`` the client
          that uses its tokens. The holder is NULL for a multi-party shared grant, whose users are its
          :class:`GrantParty` rows.
    """

    __tablename__ = "grants"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('client_credentials', 'user', 'exchange', 'multi_party', 'party')",
            name="kind",
        ),
        Index(None, "tenant_id", "user_pk"),
        Index(None, "parent_id"),
        Index(None, "holder_tenant_id"),
        Index(None, "requester_tenant_id"),
        Index("ix_grants_path", "path", postgresql_using="gin"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(Text)
    requester_tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    holder_tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    parent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("grants.id", ondelete="CASCADE"))
    path: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(UUID(as_uuid=True)), server_default=text("'{}'"))
    user_pk: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    audience: Mapped[str] = mapped_column(Text)
    resource: Mapped[str | None] = mapped_column(Text)
    subject_token_type: Mapped[str | None] = mapped_column(Text)
    access_token_ttl: Mapped[int]
    refresh_token_ttl: Mapped[int]
    request_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = server_now()
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(Text)


class GrantParty(Base):
    """A party of a multi-party grant: a client that may use the shared token with its own credentials."""

    __tablename__ = "grant_parties"
    __table_args__ = (Index(None, "tenant_id"),)

    grant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("grants.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    via: Mapped[str] = mapped_column(Text)
    withdrawn_at: Mapped[datetime | None]
