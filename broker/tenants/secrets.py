"""Client secret rotation: issue a new secret, let the old ones overlap for a while, revoke by id.

Invariants:
    * A secret is 128 random bits, shown once; only ``<algorithm>$<keyed hash>`` is stored, so the
      algorithm can change later (old hashes keep verifying under theirs). Listings never show either.
    * Rotation is serialised per tenant (the tenant row is locked): the new secret is live at once, and
      every older live secret expires ``overlap`` seconds later (one that expires sooner keeps its
      expiry). Authentication accepts any live secret, compared in constant time
      (:func:`broker.tenants.service.authenticate`), so clients switch over at their own pace.
    * Revoking a secret takes effect on the next request. Revoking the last live secret is allowed
      (a leaked secret must die now); rotating again issues a new one.
    * Every rotation and revocation is audited, never with a secret or hash.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from broker import errors
from broker.audit import service as audit
from broker.crypto import tokens
from broker.db.models import ClientSecret
from broker.tenants import repository

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing

DEFAULT_OVERLAP_SECONDS = 86_400
MAX_OVERLAP_SECONDS = 30 * 86_400


@dataclass(frozen=True)
class SecretView:
    """A secret as listings show it: never its value or hash."""

    id: uuid.UUID
    algorithm: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def live(self) -> bool:
        """Whether the secret still authenticates."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > datetime.now(UTC))


def view(secret: ClientSecret) -> SecretView:
    """The listing view of a stored secret."""
    return SecretView(
        id=secret.id,
        algorithm=secret.secret_hash.partition("$")[0],
        created_at=secret.created_at,
        last_used_at=secret.last_used_at,
        expires_at=secret.expires_at,
        revoked_at=secret.revoked_at,
    )


async def rotate_secret(
    session: AsyncSession,
    ring: KeyRing,
    client_id: str,
    *,
    overlap_seconds: int = DEFAULT_OVERLAP_SECONDS,
    actor: str,
    request_id: str | None,
) -> tuple[SecretView, str, list[SecretView]]:
    """Issue a new secret; older live secrets expire ``overlap_seconds`` from now. Caller owns the transaction.

    Returns:
        The new secret's view, its value (shown once), and every other secret of the tenant.

    Raises:
        NotFound: no tenant has ``client_id``.
        ValidationFailed: ``overlap_seconds`` is outside 0 to :data:`MAX_OVERLAP_SECONDS`.
    """
    if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
        raise errors.ValidationFailed(f"overlap_seconds must be between 0 and {MAX_OVERLAP_SECONDS}")
    tenant = await repository.lock_by_client_id(session, client_id)
    if tenant is None:
        raise errors.NotFound("no tenant with that client_id")
    expiring = await repository.expire_live_secrets(session, tenant.id, overlap_seconds)
    value = tokens.new_client_secret()
    secret = await repository.add_secret(
        session,
        ClientSecret(id=uuid.uuid4(), tenant_id=tenant.id, secret_hash=tokens.hash_secret(ring.hash_key, value)),
    )
    await audit.record(
        session,
        action="tenant.secret_rotated",
        actor=actor,
        tenant_id=tenant.id,
        request_id=request_id,
        detail={
            "client_id": client_id,
            "secret_id": str(secret.id),
            "overlap_seconds": overlap_seconds,
            "expiring": [str(s.id) for s in expiring],
        },
    )
    others = [view(s) for s in await repository.secrets_of(session, tenant.id) if s.id != secret.id]
    return view(secret), value, others


async def list_secrets(session: AsyncSession, client_id: str) -> list[SecretView]:
    """Every secret of a tenant, newest first, without values. Caller owns the transaction.

    Raises:
        NotFound: no tenant has ``client_id``.
    """
    tenant = await repository.by_client_id(session, client_id)
    if tenant is None:
        raise errors.NotFound("no tenant with that client_id")
    return [view(s) for s in await repository.secrets_of(session, tenant.id)]


async def revoke_secret(
    session: AsyncSession, client_id: str, secret_id: uuid.UUID, *, actor: str, request_id: str | None
) -> SecretView:
    """Revoke one secret (revoking a revoked one changes nothing). Caller owns the transaction.

    Raises:
        NotFound: no such tenant, or no such secret of it.
    """
    tenant = await repository.by_client_id(session, client_id)
    secret = await repository.secret_of(session, tenant.id, secret_id) if tenant is not None else None
    if tenant is None or secret is None:
        raise errors.NotFound("no secret with that id for this tenant")
    if secret.revoked_at is None:
        secret.revoked_at = datetime.now(UTC)
        await session.flush()
        await audit.record(
            session,
            action="tenant.secret_revoked",
            actor=actor,
            tenant_id=tenant.id,
            request_id=request_id,
            detail={"client_id": client_id, "secret_id": str(secret.id)},
        )
    return view(secret)
