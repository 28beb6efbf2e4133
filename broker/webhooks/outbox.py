"""The transactional outbox: events are written in the transaction of the change that caused them.

Callers (token exchange, revocation, user removal) call one function here inside their open
transaction. It resolves the subscribed endpoints and inserts one delivery row per (recipient,
endpoint) — one statement when nobody listens, two when someone does — so the event commits or rolls
back with the change, and a worker delivers it after commit (:mod:`broker.webhooks.delivery`).

Invariants:
    * One event id (``evt_...``) per event and recipient, shared by that recipient's endpoints and kept
      on every retry, so a receiver can de-duplicate.
    * A payload is ``{"type", "timestamp", "data"}`` and never holds a token or secret. The one
      exception is opt-in: when the audience policy says so, ``grant.shared`` carries the shared refresh
      token, which is stored only sealed in ``token_enc`` — under the data key of the tenant that owns
      the grant (so crypto-shredding that tenant makes the copy unreadable too), AAD bound to the
      delivery row and its recipient — added to the body when it is sent, and dropped once delivered.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker.crypto import envelope
from broker.keys import sealing
from broker.webhooks import repository

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing

GRANT_SHARED = "grant.shared"
GRANT_REVOKED = "grant.revoked"
PARTY_REMOVED = "party.removed"
USER_REMOVED = "user.removed"
WEBHOOK_TEST = "webhook.test"
EVENT_TYPES = (GRANT_SHARED, GRANT_REVOKED, PARTY_REMOVED, USER_REMOVED)
"""The events an endpoint may subscribe to (``webhook.test`` is sent on request, to one endpoint)."""


def new_event_id() -> str:
    """An event id: ``evt_`` and 32 hex characters (128 random bits)."""
    return "evt_" + secrets.token_hex(16)


def token_aad(tenant_id: uuid.UUID | None, delivery_id: uuid.UUID) -> bytes:
    """The AAD of a delivery's sealed refresh token: bound to the row and its recipient tenant."""
    return envelope.aad_for("webhook_deliveries", "token", tenant_id, delivery_id)


def endpoint_secret_aad(owner_id: uuid.UUID, endpoint_id: uuid.UUID, *, previous: bool = False) -> bytes:
    """The AAD of an endpoint's sealed signing secret: bound to the row and its owner (client or audience)."""
    column = "previous_secret" if previous else "secret"
    return envelope.aad_for("webhook_endpoints", column, owner_id, endpoint_id)


def body_payload(event_type: str, occurred_at: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """The Standard Webhooks payload shape."""
    return {"type": event_type, "timestamp": _iso(occurred_at), "data": data}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Extra:
    """What one recipient's copy of an event adds: more data fields and, opt-in, the shared refresh token."""

    data: dict[str, Any] = field(default_factory=dict)
    refresh_token: str | None = field(default=None, repr=False)


async def enqueue(
    session: AsyncSession,
    ring: KeyRing,
    event_type: str,
    data: dict[str, Any],
    *,
    tenant_ids: Sequence[uuid.UUID] = (),
    grant_ids: Sequence[uuid.UUID] = (),
    user: tuple[uuid.UUID, uuid.UUID] | None = None,
    extras: Mapping[uuid.UUID, Extra] | None = None,
    data_owner: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
) -> int:
    """Write ``event_type`` to the outbox for every subscribed endpoint of every recipient.

    Recipients are ``tenant_ids``, the holders and active parties of ``grant_ids``, and the holders and
    parties of every grant of ``user`` (``(owner tenant_id, user_pk)``); see
    :func:`repository.subscribers`. Each recipient's copy has ``data`` plus ``recipient`` (its client
    id) plus its :class:`Extra`; a refresh token in an :class:`Extra` is sealed under ``data_owner``'s
    data key. Runs inside the caller's transaction.

    Returns:
        The number of delivery rows written.
    """
    subscribers = await repository.subscribers(
        session, event_type, tenant_ids=tenant_ids, grant_ids=grant_ids, user=user
    )
    if not subscribers:
        return 0
    moment = occurred_at or datetime.now(UTC)
    extras = extras or {}
    event_ids: dict[uuid.UUID, str] = {}
    rows: list[dict[str, Any]] = []
    for subscriber in subscribers:
        event_id = event_ids.setdefault(subscriber.tenant_id, new_event_id())
        extra = extras.get(subscriber.tenant_id, Extra())
        delivery_id = uuid.uuid4()
        token_enc = None
        if extra.refresh_token is not None:
            if data_owner is None:
                msg = "a token in an event needs the tenant whose data key seals it"
                raise ValueError(msg)
            aad = token_aad(subscriber.tenant_id, delivery_id)
            token_enc = await sealing.seal(session, ring, data_owner, extra.refresh_token.encode(), aad)
        rows.append(
            {
                "id": delivery_id,
                "event_id": event_id,
                "event_type": event_type,
                "endpoint_id": subscriber.endpoint_id,
                "tenant_id": subscriber.tenant_id,
                "payload": body_payload(event_type, moment, {**data, **extra.data, "recipient": subscriber.client_id}),
                "token_enc": token_enc,
            }
        )
    await repository.insert_deliveries(session, rows)
    return len(rows)


# --- the events broker emits ---------------------------------------------------------------------------


async def grant_shared(
    session: AsyncSession,
    ring: KeyRing,
    *,
    grant_id: uuid.UUID,
    owner_tenant_id: uuid.UUID,
    kind: str,
    requester: str,
    audience: str,
    scope: Sequence[str],
    user_id: str | None,
    parties: Sequence[tuple[uuid.UUID, str]],
    refresh_token: str,
    refresh_token_expires_at: datetime,
    include_token_for: frozenset[uuid.UUID] = frozenset(),
) -> int:
    """``grant.shared`` to each party of a new multi-party grant, or to the target of an exchange.

    ``parties`` are ``(tenant_id, via)`` pairs, ``via`` being the audience entry that made the tenant a
    party. Parties in ``include_token_for`` (their audience policy opted in) also receive the shared
    refresh token, sealed in the outbox (under ``owner_tenant_id``'s data key) until it is sent.
    """
    extras: dict[uuid.UUID, Extra] = {}
    for tenant_id, via in parties:
        token = refresh_token if tenant_id in include_token_for else None
        added: dict[str, Any] = {"via": via}
        if token is not None:
            added["refresh_token_expires_at"] = _iso(refresh_token_expires_at)
        extras[tenant_id] = Extra(data=added, refresh_token=token)
    data = {
        "grant_id": str(grant_id),
        "kind": kind,
        "requester": requester,
        "audience": audience,
        "scope": " ".join(scope),
        "user_id": user_id,
    }
    recipients = [tenant_id for tenant_id, _ in parties]
    return await enqueue(
        session, ring, GRANT_SHARED, data, tenant_ids=recipients, extras=extras, data_owner=owner_tenant_id
    )


async def grants_revoked(
    session: AsyncSession,
    ring: KeyRing,
    revoked: Sequence[uuid.UUID],
    *,
    reason: str,
    grant_id: uuid.UUID | None = None,
    user_id: str | None = None,
) -> int:
    """``grant.revoked`` to every holder and active party of the revoked grants, listing all of them.

    Call it after the cascade (``revoke_subtree`` or a user's grants), in the same transaction, with the
    ids the cascade returned; ``grant_id`` is the grant the revocation was aimed at.
    """
    if not revoked:
        return 0
    data: dict[str, Any] = {
        "grant_id": str(grant_id) if grant_id is not None else None,
        "reason": reason,
        "revoked_grants": [str(g) for g in revoked],
    }
    if user_id is not None:
        data["user_id"] = user_id
    return await enqueue(session, ring, GRANT_REVOKED, data, grant_ids=revoked)


async def party_removed(
    session: AsyncSession,
    ring: KeyRing,
    *,
    grant_id: uuid.UUID,
    party_tenant_id: uuid.UUID,
    party: str,
    reason: str,
    revoked: Sequence[uuid.UUID],
    notify: Sequence[uuid.UUID],
) -> int:
    """``party.removed`` to the removed party and to ``notify`` (the grant's owner and requester).

    ``reason`` is ``withdrawn`` (the party revoked the shared token) or ``removed`` (an operator took it
    out). ``revoked`` are the party's lineages the removal revoked.
    """
    data = {
        "grant_id": str(grant_id),
        "party": party,
        "reason": reason,
        "revoked_grants": [str(g) for g in revoked],
    }
    recipients = list(dict.fromkeys([party_tenant_id, *notify]))
    return await enqueue(session, ring, PARTY_REMOVED, data, tenant_ids=recipients)


async def user_removed(
    session: AsyncSession,
    ring: KeyRing,
    *,
    tenant_id: uuid.UUID,
    user_pk: uuid.UUID,
    user_id: str,
    revoked: Sequence[uuid.UUID],
) -> int:
    """``user.removed`` to every client that ever held or shared a grant of the user, and ``grant.revoked``.

    The removal's cascade is also reported as ``grant.revoked`` (reason ``user.removed``), so an endpoint
    that subscribes only to revocations still learns that its grants died.
    """
    data = {"user_id": user_id, "revoked_grants": [str(g) for g in revoked]}
    written = await enqueue(session, ring, USER_REMOVED, data, user=(tenant_id, user_pk))
    return written + await grants_revoked(session, ring, revoked, reason="user.removed", user_id=user_id)
