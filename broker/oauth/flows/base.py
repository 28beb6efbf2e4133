"""What every grant flow shares: the request, the result, and minting a grant with a token pair.

Invariants:
    * A token is returned only after the transaction that stored it commits (the service commits
      before the route builds a response).
    * Refresh tokens are stored as an HMAC digest for lookup plus an AES-256-GCM envelope whose AAD
      binds it to its row and tenant; access tokens only as a digest.
    * A child grant inherits the owner tenant and the user of its parent, and its ``path`` is the
      parent's path plus the parent, so revoking any ancestor kills it (see ``oauth.repository``).
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from broker import errors
from broker.audit import service as audit
from broker.crypto import envelope, tokens
from broker.db.models import Grant as GrantRow
from broker.keys import sealing
from broker.oauth import repository
from broker.tenants.clients import AuthenticatedClient

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.crypto.keyring import KeyRing

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:refresh_token"
MAX_LINEAGE_DEPTH = 8


class DeferredFailure(Exception):
    """The request fails with ``error``, but what the flow wrote (audit, a revoked family) must commit."""

    def __init__(self, error: errors.BrokerError) -> None:
        super().__init__(error.description)
        self.error = error


@dataclass(frozen=True)
class TokenRequest:
    """An authenticated token request: the calling client and its parameters."""

    client: AuthenticatedClient
    params: dict[str, list[str]]
    request_id: str
    now: datetime

    def get(self, name: str) -> str | None:
        """The single value of a parameter, or None."""
        values = self.params.get(name)
        return values[0] if values else None

    def require(self, name: str) -> str:
        """The single value of a required parameter."""
        value = self.get(name)
        if value is None:
            raise errors.InvalidRequest(f"missing required parameter {name!r}")
        return value


@dataclass(frozen=True)
class IssuedTokens:
    """What a successful token request returns (RFC 6749 §5.1, RFC 8693 §2.2.1)."""

    access_token: str
    refresh_token: str
    expires_in: int
    scope: tuple[str, ...]
    grant_id: uuid.UUID
    issued_token_type: str | None = None

    def __repr__(self) -> str:
        return f"IssuedTokens(grant_id={self.grant_id}, scope={self.scope!r}, tokens=***)"


@dataclass(frozen=True)
class NewGrant:
    """The values of a grant to create."""

    kind: str
    tenant_id: uuid.UUID
    requester_tenant_id: uuid.UUID
    holder_tenant_id: uuid.UUID | None
    scopes: tuple[str, ...]
    audience: str
    access_token_ttl: int
    refresh_token_ttl: int
    parent: GrantRow | None = None
    user_pk: uuid.UUID | None = None
    resource: str | None = None
    subject_token_type: str | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)


class Flow(ABC):
    """One grant type (authlib's grant classes, fosite's handlers)."""

    grant_type: ClassVar[str]

    @abstractmethod
    async def issue(self, session: AsyncSession, runtime: Runtime, request: TokenRequest) -> IssuedTokens:
        """Validate the request and issue tokens inside the caller's open transaction."""


async def create_grant(session: AsyncSession, new: NewGrant, request_id: str, now: datetime) -> uuid.UUID:
    """Insert a grant, deriving its lineage path from its parent."""
    path: list[uuid.UUID] = []
    if new.parent is not None:
        path = [*new.parent.path, new.parent.id]
        if len(path) > MAX_LINEAGE_DEPTH:
            raise errors.InvalidRequest("the subject token's lineage is too deep to exchange further")
    await repository.insert_grant(
        session,
        {
            "id": new.id,
            "tenant_id": new.tenant_id,
            "kind": new.kind,
            "requester_tenant_id": new.requester_tenant_id,
            "holder_tenant_id": new.holder_tenant_id,
            "parent_id": new.parent.id if new.parent is not None else None,
            "path": path,
            "user_pk": new.user_pk,
            "scopes": list(new.scopes),
            "audience": new.audience,
            "resource": new.resource,
            "subject_token_type": new.subject_token_type,
            "access_token_ttl": new.access_token_ttl,
            "refresh_token_ttl": new.refresh_token_ttl,
            "request_id": request_id,
            "created_at": now,
        },
    )
    return new.id


@dataclass(frozen=True)
class MintedPair:
    """A freshly stored token pair."""

    access_token: str
    refresh_token: str
    refresh_id: uuid.UUID
    access_expires_at: datetime

    def __repr__(self) -> str:
        return f"MintedPair(refresh_id={self.refresh_id}, tokens=***)"


async def mint_pair(
    session: AsyncSession,
    ring: KeyRing,
    *,
    tenant_id: uuid.UUID,
    grant_id: uuid.UUID,
    access_scopes: tuple[str, ...],
    access_ttl: int,
    refresh_ttl: int,
    now: datetime,
    parent_refresh_id: uuid.UUID | None = None,
    access: str | None = None,
    refresh: str | None = None,
) -> MintedPair:
    """Store a new access token and refresh token for ``grant_id``.

    Both are minted here unless given: gateway mode (:mod:`broker.gateway`) stores the upstream's access
    token, and in transparent mode its refresh token too, so local lookups, revocation and introspection
    see them like broker's own.
    """
    access = access if access is not None else tokens.new_access_token()
    refresh = refresh if refresh is not None else tokens.new_refresh_token()
    refresh_id = uuid.uuid4()
    access_expires_at = now + timedelta(seconds=access_ttl)
    aad = envelope.aad_for("refresh_tokens", "token", tenant_id, refresh_id)
    sealed = await sealing.seal(session, ring, tenant_id, refresh.encode(), aad)
    await repository.insert_tokens(
        session,
        refresh={
            "id": refresh_id,
            "tenant_id": tenant_id,
            "grant_id": grant_id,
            "digest": tokens.digest(ring.hash_key, refresh),
            "token_enc": sealed,
            "parent_id": parent_refresh_id,
            "created_at": now,
            "expires_at": now + timedelta(seconds=refresh_ttl),
        },
        access={
            "digest": tokens.digest(ring.hash_key, access),
            "tenant_id": tenant_id,
            "grant_id": grant_id,
            "scopes": list(access_scopes),
            "created_at": now,
            "expires_at": access_expires_at,
        },
    )
    return MintedPair(access, refresh, refresh_id, access_expires_at)


async def issue_grant(
    session: AsyncSession,
    runtime: Runtime,
    request: TokenRequest,
    new: NewGrant,
    *,
    action: str,
    detail: dict[str, Any],
    parties: Sequence[tuple[uuid.UUID, str]] = (),
    user_id: str | None = None,
    issued_token_type: str | None = None,
) -> IssuedTokens:
    """Create ``new`` (with its parties), mint its first pair and audit ``action``, in the open transaction."""
    grant_id = await create_grant(session, new, request.request_id, request.now)
    if parties:
        await repository.insert_parties(session, grant_id, parties)
    pair = await mint_pair(
        session,
        runtime.ring,
        tenant_id=new.tenant_id,
        grant_id=grant_id,
        access_scopes=new.scopes,
        access_ttl=new.access_token_ttl,
        refresh_ttl=new.refresh_token_ttl,
        now=request.now,
    )
    await audit.record(
        session,
        action=action,
        actor=request.client.client_id,
        tenant_id=new.tenant_id,
        request_id=request.request_id,
        grant_id=grant_id,
        user_id=user_id,
        detail={**detail, "scope": list(new.scopes)},
    )
    return IssuedTokens(
        pair.access_token, pair.refresh_token, new.access_token_ttl, new.scopes, grant_id, issued_token_type
    )


async def seal_retry_pair(
    session: AsyncSession,
    ring: KeyRing,
    token_id: uuid.UUID,
    tenant_id: uuid.UUID,
    issued: IssuedTokens,
    *,
    now: datetime,
) -> str:
    """Seal a rotation's successor pair so a retry within the grace window gets the same pair."""
    aad = retry_pair_aad(token_id, tenant_id)
    return await sealing.seal(session, ring, tenant_id, retry_pair_plaintext(issued, now), aad)


def retry_pair_plaintext(issued: IssuedTokens, now: datetime) -> bytes:
    """What a sealed retry pair holds: the successor pair, its expiry, scope and grant."""
    payload: dict[str, Any] = {
        "a": issued.access_token,
        "r": issued.refresh_token,
        "x": int(now.timestamp()) + issued.expires_in,
        "s": list(issued.scope),
        "g": str(issued.grant_id),
    }
    return json.dumps(payload).encode()


def retry_pair_aad(token_id: uuid.UUID, tenant_id: uuid.UUID) -> bytes:
    """The AAD binding a retry pair to the rotated token's row and tenant."""
    return envelope.aad_for("refresh_tokens", "retry_pair", tenant_id, token_id)


async def open_retry_pair(
    session: AsyncSession, ring: KeyRing, token_id: uuid.UUID, tenant_id: uuid.UUID, sealed: str, *, now: datetime
) -> IssuedTokens:
    """Open a sealed retry pair (see :func:`seal_retry_pair`)."""
    aad = retry_pair_aad(token_id, tenant_id)
    payload = json.loads(await sealing.open_(session, ring, sealed, aad))
    return IssuedTokens(
        access_token=payload["a"],
        refresh_token=payload["r"],
        expires_in=max(0, payload["x"] - int(now.timestamp())),
        scope=tuple(payload["s"]),
        grant_id=uuid.UUID(payload["g"]),
    )


def grant_is_live(grant: GrantRow, ancestor_revoked: bool) -> bool:
    """Whether a grant and all its ancestors are unrevoked."""
    return grant.revoked_at is None and not ancestor_revoked


def ttl(*candidates: int | None) -> int:
    """The first configured lifetime among ``candidates`` (the last one is the global default)."""
    for value in candidates:
        if value is not None:
            return value
    msg = "no lifetime configured"
    raise RuntimeError(msg)
