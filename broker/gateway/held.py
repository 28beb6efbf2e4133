"""The upstream refresh tokens broker holds for gateway grants: their AAD, opening them, revoking them upstream."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.crypto import envelope
from broker.crypto.envelope import EnvelopeError
from broker.gateway import calls, repository
from broker.keys import sealing

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing
    from broker.db.models import UpstreamGrant


def upstream_token_aad(tenant_id: uuid.UUID, grant_id: uuid.UUID) -> bytes:
    """The AAD of a grant's sealed upstream refresh token: bound to the grant and its owner tenant."""
    return envelope.aad_for("upstream_grants", "token", tenant_id, grant_id)


async def open_held(session: AsyncSession, ring: KeyRing, held: UpstreamGrant) -> str | None:
    """The upstream refresh token of a gateway grant, or None when it cannot be opened (shredded key)."""
    try:
        sealed = await sealing.open_(session, ring, held.token_enc, upstream_token_aad(held.tenant_id, held.id))
    except EnvelopeError:
        return None
    return sealed.decode()


async def queue_revocation(
    session: AsyncSession, ring: KeyRing, grant_id: uuid.UUID, *, as_tenant: uuid.UUID, request_id: str | None
) -> uuid.UUID | None:
    """Queue the upstream revocation of a gateway grant's held token, with ``as_tenant``'s upstream credentials.

    For revocations that do not come through ``/oauth/revoke`` (an operator revoking a grant or removing a
    party): the upstream cascades like broker does, so the grant's own token is enough. Does nothing for
    a grant broker issued itself. Runs in the caller's transaction (the outbox, :mod:`.calls`).
    """
    held = await repository.upstream_grant(session, grant_id)
    if held is None:
        return None
    token = await open_held(session, ring, held)
    if token is None:
        return None
    return await calls.enqueue(
        session, ring, tenant_id=as_tenant, operation="revoke", payload={"token": token}, request_id=request_id
    )
