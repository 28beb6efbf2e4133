"""Users: the consumers that exchanges are about (``/user/create``, ``/get``, ``/update``, ``/remove``).

Invariants:
    * A tenant only ever sees its own users; another tenant's user is indistinguishable from an
      unknown one (``USER_NOT_FOUND``).
    * ``/user/create`` is idempotent per tenant on ``client_user_id``: the same ``user_id`` and the same
      ``user_token`` come back, so the token is kept sealed (AES-GCM, AAD bound to tenant and row) and
      found by its keyed digest, never by decryption. Concurrent creates yield one user (the partial
      unique index on live users plus ``ON CONFLICT DO NOTHING``).
    * Identity data is sealed at rest; removal drops it and leaves a tombstone, so the same
      ``client_user_id`` later makes a new user.
    * Removing a user revokes every grant whose subject it is, in the same transaction, and queues the
      ``user.removed`` and ``grant.revoked`` webhooks in it too.
    * Audit events name users by ``user_id`` and never carry a token or identity data.

Every use case here runs its own short transaction on the session it is given.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from broker import errors
from broker.audit import service as audit
from broker.crypto import envelope, tokens
from broker.crypto.envelope import EnvelopeError
from broker.keys import sealing
from broker.users import repository
from broker.webhooks import outbox

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing
    from broker.db.models import User

MAX_IDENTITY_BYTES = 16 * 1024
"""Largest ``identity`` or ``consumer_report_user_identity`` accepted, as compact JSON (after merging)."""

PROFILE_KEYS = ("identity", "consumer_report_user_identity")
_CREATE_ATTEMPTS = 3


@dataclass(frozen=True)
class CreatedUser:
    """The answer to ``/user/create``. ``created`` is False when an existing user was returned."""

    user_id: str
    user_token: str = field(repr=False)
    created: bool


@dataclass(frozen=True)
class UserView:
    """What ``/user/get`` shows of a live user."""

    user_id: str
    client_user_id: str
    created_at: datetime
    updated_at: datetime | None
    identity: dict[str, Any] | None = field(default=None, repr=False)
    consumer_report_user_identity: dict[str, Any] | None = field(default=None, repr=False)


def _token_aad(tenant_id: uuid.UUID, row_id: uuid.UUID) -> bytes:
    return envelope.aad_for("users", "user_token", tenant_id, row_id)


def _identity_aad(tenant_id: uuid.UUID, row_id: uuid.UUID) -> bytes:
    return envelope.aad_for("users", "identity", tenant_id, row_id)


def _merge_profile(current: dict[str, Any], updates: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Merge identity objects key by key (sent keys overwrite, omitted keys stay) and bound their size."""
    merged = dict(current)
    for key in PROFILE_KEYS:
        sent = updates.get(key)
        if sent is None:
            continue
        combined = {**merged.get(key, {}), **sent}
        if len(json.dumps(combined, separators=(",", ":"))) > MAX_IDENTITY_BYTES:
            raise errors.InvalidField(f"{key} is too large (at most {MAX_IDENTITY_BYTES} bytes of JSON)")
        merged[key] = combined
    return merged


async def _seal_profile(
    session: AsyncSession, ring: KeyRing, tenant_id: uuid.UUID, row_id: uuid.UUID, profile: dict[str, Any]
) -> str:
    plaintext = json.dumps(profile, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return await sealing.seal(session, ring, tenant_id, plaintext, _identity_aad(tenant_id, row_id))


async def _open_profile(session: AsyncSession, ring: KeyRing, user: User) -> dict[str, Any]:
    if user.identity_enc is None:
        return {}
    try:
        plaintext = await sealing.open_(session, ring, user.identity_enc, _identity_aad(user.tenant_id, user.id))
    except EnvelopeError:
        # Its tenant's data key was shredded: the user's data is gone, and so is the user.
        raise errors.UserNotFound("the user was not found", debug="user data unreadable (shredded)") from None
    profile: dict[str, Any] = json.loads(plaintext)
    return profile


async def create_user(
    session: AsyncSession,
    ring: KeyRing,
    *,
    tenant_id: uuid.UUID,
    client_user_id: str,
    token_env: str,
    identity: dict[str, Any] | None = None,
    consumer_report_user_identity: dict[str, Any] | None = None,
    actor: str,
    request_id: str | None,
) -> CreatedUser:
    """Create the tenant's user for ``client_user_id``, or return the live one that already exists.

    A repeated create returns the existing user unchanged (identity sent again is ignored; use
    :func:`update_user`). One transaction: ``INSERT ... ON CONFLICT DO NOTHING`` on the live-user
    index, then ``SELECT`` the winner, so concurrent creates all answer with the same user.

    Raises:
        InvalidField: an identity object is too large.
    """
    profile = _merge_profile({}, {"identity": identity, "consumer_report_user_identity": consumer_report_user_identity})
    async with session.begin():
        for _ in range(_CREATE_ATTEMPTS):
            row_id = uuid.uuid4()
            user_id = tokens.new_user_id()
            user_token = tokens.new_user_token(token_env)
            values: dict[str, Any] = {
                "id": row_id,
                "tenant_id": tenant_id,
                "user_id": user_id,
                "client_user_id": client_user_id,
                "user_token_digest": tokens.digest(ring.hash_key, user_token),
                "user_token_enc": await sealing.seal(
                    session, ring, tenant_id, user_token.encode("utf-8"), _token_aad(tenant_id, row_id)
                ),
                "identity_enc": await _seal_profile(session, ring, tenant_id, row_id, profile) if profile else None,
            }
            if await repository.insert_if_absent(session, values) is not None:
                await audit.record(
                    session,
                    action="user.created",
                    actor=actor,
                    tenant_id=tenant_id,
                    request_id=request_id,
                    user_id=user_id,
                    detail={"identity": sorted(profile)},
                )
                return CreatedUser(user_id=user_id, user_token=user_token, created=True)
            existing = await repository.live_by_client_user_id(session, tenant_id, client_user_id)
            if existing is not None:
                try:
                    stored = await sealing.open_(
                        session, ring, existing.user_token_enc, _token_aad(tenant_id, existing.id)
                    )
                except EnvelopeError:
                    # Its data key was shredded (on another replica, moments ago): the user is gone.
                    await repository.mark_removed(session, tenant_id, existing.id)
                    continue
                return CreatedUser(user_id=existing.user_id, user_token=stored.decode("utf-8"), created=False)
            # The conflicting user was removed between the two statements: try again.
    msg = "user create kept conflicting with concurrent removals"
    raise RuntimeError(msg)


async def _require(
    session: AsyncSession,
    ring: KeyRing,
    tenant_id: uuid.UUID,
    user_id: str | None,
    user_token: str | None,
    *,
    lock: str | None = None,
) -> User:
    if user_id is None and user_token is None:
        raise errors.MissingFields("the following required fields are missing: user_id")
    digest = tokens.digest(ring.hash_key, user_token) if user_token is not None else None
    user = await repository.find_live(session, tenant_id, user_id=user_id, token_digest=digest, lock=lock)
    if user is None:
        raise errors.UserNotFound("the user was not found", debug=f"tenant {tenant_id}")
    return user


async def get_user(
    session: AsyncSession, ring: KeyRing, *, tenant_id: uuid.UUID, user_id: str | None, user_token: str | None
) -> UserView:
    """The tenant's live user named by ``user_id`` or ``user_token`` (both given: both must match).

    Raises:
        MissingFields: neither ``user_id`` nor ``user_token`` was given.
        UserNotFound: no such live user of this tenant.
    """
    async with session.begin():
        user = await _require(session, ring, tenant_id, user_id, user_token)
        profile = await _open_profile(session, ring, user)
    return UserView(
        user_id=user.user_id,
        client_user_id=user.client_user_id,
        created_at=user.created_at,
        updated_at=user.updated_at,
        identity=profile.get("identity"),
        consumer_report_user_identity=profile.get("consumer_report_user_identity"),
    )


async def update_user(
    session: AsyncSession,
    ring: KeyRing,
    *,
    tenant_id: uuid.UUID,
    user_id: str | None,
    user_token: str | None,
    identity: dict[str, Any] | None,
    consumer_report_user_identity: dict[str, Any] | None,
    actor: str,
    request_id: str | None,
) -> None:
    """Merge identity data into the user: keys sent overwrite, keys omitted stay.

    The user row is locked (``FOR UPDATE``) for the read-merge-write, so concurrent updates never
    lose each other's fields.

    Raises:
        MissingFields: no user reference, or neither identity object.
        UserNotFound: no such live user of this tenant.
        InvalidField: the merged identity is too large.
    """
    if identity is None and consumer_report_user_identity is None:
        raise errors.MissingFields("the following required fields are missing: identity")
    updates = {"identity": identity, "consumer_report_user_identity": consumer_report_user_identity}
    async with session.begin():
        user = await _require(session, ring, tenant_id, user_id, user_token, lock="update")
        profile = _merge_profile(await _open_profile(session, ring, user), updates)
        await repository.set_identity(session, user.id, await _seal_profile(session, ring, tenant_id, user.id, profile))
        await audit.record(
            session,
            action="user.updated",
            actor=actor,
            tenant_id=tenant_id,
            request_id=request_id,
            user_id=user.user_id,
            detail={"fields": sorted(k for k, v in updates.items() if v is not None)},
        )


async def remove_user(
    session: AsyncSession,
    ring: KeyRing,
    *,
    tenant_id: uuid.UUID,
    user_id: str | None,
    user_token: str | None,
    actor: str,
    request_id: str | None,
) -> int:
    """Tombstone the user and revoke every grant whose subject it is, in one transaction.

    The user row is locked first, so an exchange that locks the user (:func:`find_subject`) either
    commits before the removal (and its new grant is revoked here) or sees the user gone.

    Returns:
        The number of grants revoked.

    Raises:
        MissingFields: neither ``user_id`` nor ``user_token`` was given.
        UserNotFound: no such live user of this tenant.
    """
    async with session.begin():
        user = await _require(session, ring, tenant_id, user_id, user_token, lock="update")
        await repository.mark_removed(session, tenant_id, user.id)
        revoked = await repository.revoke_user_grants(session, tenant_id, user.id)
        await audit.record(
            session,
            action="user.removed",
            actor=actor,
            tenant_id=tenant_id,
            request_id=request_id,
            user_id=user.user_id,
            detail={"grants_revoked": len(revoked)},
        )
        await outbox.user_removed(
            session, ring, tenant_id=tenant_id, user_pk=user.id, user_id=user.user_id, revoked=revoked
        )
    return len(revoked)


async def find_subject(
    session: AsyncSession, ring: KeyRing, tenant_id: uuid.UUID, value: str, *, lock: bool = True
) -> User | None:
    """The live user of ``tenant_id`` whose ``user_id`` is ``value`` or whose user token is ``value``.

    For token exchange (``urn:plaid:params:tokens:user`` and ``...:credit:multi-user`` accept either
    form). One indexed query; the token is matched by keyed digest, never decrypted. Another tenant's
    user, a removed user and an unknown value all give None.

    Args:
        session: A session inside the caller's transaction.
        ring: The key ring (its hash key digests ``value``).
        tenant_id: The calling tenant; only its users match.
        value: A ``usr_...`` id or a ``user-<env>-<uuid>`` token.
        lock: Take ``FOR SHARE`` on the row (default) so a concurrent ``/user/remove`` waits for the
            caller's transaction and then revokes what it created, or the caller waits and finds none.
    """
    return await repository.find_live(
        session,
        tenant_id,
        user_id=value,
        token_digest=tokens.digest(ring.hash_key, value),
        match_either=True,
        lock="share" if lock else None,
    )
