"""Partner webhooks: endpoints, the transactional outbox of deliveries, and every delivery attempt."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Identity, Index, Text, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from broker.db.base import Base, server_now, uuid_pk

DELIVERY_STATUSES = ("pending", "delivered", "dead")


class WebhookEndpoint(Base):
    """A URL that receives signed events for one partner client (``tenant_id``) or one audience.

    The signing secret (``whsec_...``) is sealed (AES-256-GCM, AAD bound to this row). During a rotation
    the previous secret stays sealed in ``previous_secret_enc`` until ``previous_secret_expires_at``, and
    deliveries carry both signatures.
    """

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        CheckConstraint("(tenant_id IS NULL) <> (audience_id IS NULL)", name="one_owner"),
        Index(None, "tenant_id"),
        Index(None, "audience_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    audience_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("audiences.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    secret_enc: Mapped[str] = mapped_column(Text)
    previous_secret_enc: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = server_now()
    updated_at: Mapped[datetime] = server_now()


class WebhookDelivery(Base):
    """One event for one endpoint: the outbox row, written in the transaction of the change it reports.

    ``event_id`` is stable across retries and redeliveries (it is the ``webhook-id`` header) so a receiver
    can de-duplicate. A worker claims due rows with ``FOR UPDATE SKIP LOCKED`` and sets a lease
    (``locked_until``, ``claim_id``) before it posts outside any transaction; a crashed worker's lease
    expires and the row is claimed again. ``failures`` counts failed attempts since the last (re)delivery
    request and drives backoff and dead-lettering; ``attempt_count`` counts every claim. A shared refresh
    token, when the audience policy asks for it, is kept only sealed in ``token_enc`` (AAD bound to the
    row and recipient) and added to the body at send time.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="status"),
        Index("ix_webhook_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
        Index(None, "endpoint_id", "created_at"),
        Index(None, "status", "created_at"),
        Index(None, "event_id"),
        Index(None, "tenant_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    event_id: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(Text)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    token_enc: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    attempt_count: Mapped[int] = mapped_column(server_default=text("0"))
    failures: Mapped[int] = mapped_column(server_default=text("0"))
    next_attempt_at: Mapped[datetime] = server_now()
    locked_until: Mapped[datetime | None]
    claim_id: Mapped[uuid.UUID | None]
    last_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = server_now()


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: status code, the first 2,048 characters of the response, or the error."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index(None, "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime]
    duration_ms: Mapped[int]
    status_code: Mapped[int | None]
    response_body: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
