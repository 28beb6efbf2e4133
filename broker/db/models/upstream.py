"""Gateway mode: a tenant's upstream, the upstream tokens held for its grants, and retried upstream calls."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from broker.db.base import Base, server_now, uuid_pk

UPSTREAM_MODES = ("held", "transparent")
UPSTREAM_OPERATIONS = ("revoke", "user_remove")
UPSTREAMS_V1_ROWS = "secret_enc LIKE 'v1.%'"
UPSTREAM_GRANTS_V1_ROWS = "token_enc LIKE 'v1.%'"
UPSTREAM_CALLS_V1_ROWS = "payload_enc LIKE 'v1.%'"


class TenantUpstream(Base):
    """The upstream of a gateway tenant: a Plaid-compatible base URL and the tenant's credentials there.

    ``secret_enc`` is sealed under the tenant's data key (AAD bound to the row and tenant) and never
    leaves the process except in the headers of an upstream request. Changing the upstream bumps
    ``tenants.updated_at``, so cached client snapshots (``tenants.clients``) are re-read.
    """

    __tablename__ = "tenant_upstreams"
    __table_args__ = (
        CheckConstraint("mode IN ('held', 'transparent')", name="mode"),
        Index("ix_tenant_upstreams_v1", "id", postgresql_where=text(UPSTREAMS_V1_ROWS)),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), unique=True)
    base_url: Mapped[str] = mapped_column(Text)
    client_id: Mapped[str] = mapped_column(Text)
    secret_enc: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(Text, default="held")
    created_at: Mapped[datetime] = server_now()
    updated_at: Mapped[datetime] = server_now()


class UpstreamGrant(Base):
    """What the upstream issued for a local grant: its refresh token (sealed) and its user.

    ``id`` is the local grant's id. ``lease_until`` serialises upstream refreshes of one grant without a
    row lock held across the HTTP call: a request takes the lease in a short transaction, calls the
    upstream, and clears it when it records the outcome.
    """

    __tablename__ = "upstream_grants"
    __table_args__ = (
        Index(None, "tenant_id", "user_id"),
        Index("ix_upstream_grants_v1", "id", postgresql_where=text(UPSTREAM_GRANTS_V1_ROWS)),
    )

    id: Mapped[uuid.UUID] = mapped_column(ForeignKey("grants.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    token_enc: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(Text)
    upstream_request_id: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None]
    updated_at: Mapped[datetime] = server_now()


class UpstreamCall(Base):
    """An upstream revocation or user removal to (re)try until the upstream confirms it (an outbox).

    Written in the transaction that applied the change locally; ``payload_enc`` (the token or user id)
    is sealed under the tenant's data key. Claimed with ``FOR UPDATE SKIP LOCKED`` like webhook
    deliveries, retried with backoff, never abandoned: ``completed_at`` is set only on the upstream's
    confirmation (or a definitive answer that retrying cannot change).
    """

    __tablename__ = "upstream_calls"
    __table_args__ = (
        CheckConstraint("operation IN ('revoke', 'user_remove')", name="operation"),
        Index("ix_upstream_calls_due", "next_attempt_at", postgresql_where=text("completed_at IS NULL")),
        Index("ix_upstream_calls_v1", "id", postgresql_where=text(UPSTREAM_CALLS_V1_ROWS)),
        Index(None, "tenant_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    operation: Mapped[str] = mapped_column(Text)
    payload_enc: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    next_attempt_at: Mapped[datetime] = server_now()
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = server_now()
    completed_at: Mapped[datetime | None]
