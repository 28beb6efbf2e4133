"""Admin API keys: issuing, listing, revoking, and authenticating a presented key.

Invariants:
    * A key is ``bka-`` + 192 random bits (:func:`broker.crypto.tokens.new_admin_key`); only its keyed
      digest is stored, so it is shown once, at creation, and found by digest, never by decryption.
    * ``read`` keys may only read (GET/HEAD); ``write`` keys may do everything.
    * ``last_used_at`` is written at most once per :data:`TOUCH_INTERVAL` per key, so a busy key does not
      turn every admin read into a write.
    * Names are unique among unrevoked keys: the name is the audit actor (``admin:<name>``).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from broker import errors
from broker.admin_keys import repository
from broker.audit import service as audit
from broker.crypto import tokens
from broker.db.models import AdminKey

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing

KEY_PREFIX = "bka-"
SCOPES = ("read", "write")
TOUCH_INTERVAL = timedelta(minutes=1)
MAX_PRESENTED_CHARS = 256
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@+-]{0,99}$")


@dataclass(frozen=True)
class AdminPrincipal:
    """The admin key a request was authenticated with."""

    key_id: uuid.UUID
    name: str
    scope: str

    @property
    def actor(self) -> str:
        """The audit actor for changes made with this key."""
        return f"admin:{self.name}"


def validate_name(name: str) -> str:
    """A key name, trimmed: 1 to 100 letters, digits, spaces and ``._@+-``, starting with a letter or digit.

    Raises:
        ValidationFailed: the name does not have that shape.
    """
    cleaned = name.strip()
    if not _NAME.match(cleaned):
        raise errors.ValidationFailed(
            "name must be 1 to 100 characters: letters, digits, spaces and ._@+- (starting with a letter or digit)"
        )
    return cleaned


async def create_key(
    session: AsyncSession, ring: KeyRing, *, name: str, scope: str, actor: str, request_id: str | None
) -> tuple[AdminKey, str]:
    """Issue a new admin key. The key is returned once and only its digest is stored.

    The caller owns the transaction.

    Raises:
        ValidationFailed: bad name or scope.
        Conflict: an unrevoked key already has this name.
    """
    cleaned = validate_name(name)
    if scope not in SCOPES:
        raise errors.ValidationFailed(f"scope must be one of {', '.join(SCOPES)}")
    await repository.lock_name(session, cleaned)
    if await repository.live_name_exists(session, cleaned):
        raise errors.Conflict(f"an active admin key named {cleaned!r} already exists")
    value = tokens.new_admin_key()
    key = await repository.add(
        session, AdminKey(id=uuid.uuid4(), name=cleaned, digest=tokens.digest(ring.hash_key, value), scope=scope)
    )
    await audit.record(
        session,
        action="admin_key.created",
        actor=actor,
        tenant_id=None,
        request_id=request_id,
        detail={"key_id": str(key.id), "name": cleaned, "scope": scope},
    )
    return key, value


async def list_keys(session: AsyncSession) -> list[AdminKey]:
    """Every admin key, oldest first (digests stay server-side; callers render names and dates only)."""
    return await repository.list_all(session)


async def revoke_key(session: AsyncSession, key_id: uuid.UUID, *, actor: str, request_id: str | None) -> AdminKey:
    """Revoke a key; revoking a revoked key changes nothing. The caller owns the transaction.

    Raises:
        NotFound: no key has this id.
    """
    key = await repository.by_id(session, key_id)
    if key is None:
        raise errors.NotFound("no admin key with that id")
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
        await session.flush()
        await audit.record(
            session,
            action="admin_key.revoked",
            actor=actor,
            tenant_id=None,
            request_id=request_id,
            detail={"key_id": str(key.id), "name": key.name},
        )
    return key


async def authenticate(session: AsyncSession, ring: KeyRing, presented: str | None, *, write: bool) -> AdminPrincipal:
    """Check a presented admin key. Runs its own short transaction on ``session``.

    Args:
        session: A session with no transaction in progress.
        ring: The key ring (its hash key finds the key by digest).
        presented: The bearer value from the request, or None when there was none.
        write: Whether the request changes state (then a ``write`` key is needed).

    Raises:
        Unauthorized: no key, a malformed key, an unknown key or a revoked key.
        Forbidden: a ``read`` key used for a change.
    """
    if presented is None:
        raise errors.Unauthorized("admin API key required (Authorization: Bearer bka-...)")
    if not presented.startswith(KEY_PREFIX) or len(presented) > MAX_PRESENTED_CHARS or not presented.isascii():
        raise errors.Unauthorized("invalid admin API key", debug="malformed admin key")
    async with session.begin():
        key = await repository.by_digest(session, tokens.digest(ring.hash_key, presented))
        if key is None or key.revoked_at is not None:
            raise errors.Unauthorized("invalid admin API key", debug="unknown or revoked admin key")
        if write and key.scope != "write":
            raise errors.Forbidden("this admin API key is read-only")
        now = datetime.now(UTC)
        if key.last_used_at is None or now - key.last_used_at >= TOUCH_INTERVAL:
            await repository.touch(session, key.id, TOUCH_INTERVAL)
    return AdminPrincipal(key_id=key.id, name=key.name, scope=key.scope)
