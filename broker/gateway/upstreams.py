"""A tenant's upstream: configure it (admin API, CLI), read it without its secret, and load it to call it.

Invariants:
    * The upstream secret is sealed under the tenant's data key (AAD bound to the row and tenant) and is
      returned by no API: views carry the base URL, the upstream client id, the mode and a keyed
      fingerprint of the secret (HMAC with the server hash key), enough to tell which secret is set.
    * A base URL is ``https`` (plain ``http`` only outside production or with
      ``BROKER_UPSTREAM_ALLOW_HTTP``), has a host, no user info, query or fragment; it is stored without
      a trailing slash.
    * Setting or removing an upstream bumps the tenant's ``updated_at`` in the same transaction, so a
      cached client snapshot on any replica fails its re-check and is read again (``tenants.clients``).
    * :func:`load` caches the opened upstream per tenant keyed by the snapshot's ``updated_at``, so a
      change is seen by the next request that authenticated after it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from broker import errors
from broker.audit import service as audit
from broker.crypto import envelope, tokens
from broker.crypto.envelope import EnvelopeError
from broker.db.models.upstream import UPSTREAM_MODES
from broker.gateway import repository
from broker.gateway.client import Upstream
from broker.keys import sealing
from broker.tenants import repository as tenants_repository
from broker.tenants.clients import StaleClient
from broker.webhooks.safety import UnsafeTarget, check_url

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.crypto.keyring import KeyRing
    from broker.db.models import Tenant, TenantUpstream
    from broker.settings import Settings
    from broker.tenants.clients import AuthenticatedClient

MAX_FIELD_CHARS = 256
_CACHE: dict[uuid.UUID, tuple[datetime, Upstream]] = {}
_CACHE_CAPACITY = 10_000


@dataclass(frozen=True, repr=False)
class UpstreamSpec:
    """What an operator sets: where the upstream is, the tenant's credentials there, and the mode."""

    base_url: str
    client_id: str
    secret: str
    mode: str = "held"

    def __repr__(self) -> str:
        return f"UpstreamSpec(base_url={self.base_url!r}, client_id={self.client_id!r}, mode={self.mode!r}, secret=***)"


@dataclass(frozen=True)
class UpstreamView:
    """A tenant's upstream as the admin API shows it: never the secret."""

    tenant_client_id: str
    base_url: str
    client_id: str
    mode: str
    secret_fingerprint: str
    created_at: datetime
    updated_at: datetime


def secret_aad(tenant_id: uuid.UUID, row_id: uuid.UUID) -> bytes:
    """The AAD of a sealed upstream secret: bound to its row and tenant."""
    return envelope.aad_for("tenant_upstreams", "secret", tenant_id, row_id)


def normalize_base_url(value: str, settings: Settings) -> str:
    """Check and normalise an upstream base URL (see the module invariants).

    Raises:
        ValidationFailed: the URL is not acceptable; the message says why.
    """
    url = value.strip().rstrip("/")
    try:
        check_url(url, allow_http=settings.upstreams_may_use_http)
    except UnsafeTarget as exc:
        raise errors.ValidationFailed(f"base_url: {exc}") from None
    parts = urlsplit(url)
    if parts.query:
        raise errors.ValidationFailed("base_url must not have a query")
    return url


def _check(spec: UpstreamSpec, settings: Settings) -> tuple[str, str, str, str]:
    base_url = normalize_base_url(spec.base_url, settings)
    client_id, secret = spec.client_id.strip(), spec.secret.strip()
    for name, value in (("client_id", client_id), ("secret", secret)):
        if not value or len(value) > MAX_FIELD_CHARS or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value):  # noqa: PLR2004
            raise errors.ValidationFailed(f"{name} must be 1 to {MAX_FIELD_CHARS} printable characters")
    if spec.mode not in UPSTREAM_MODES:
        raise errors.ValidationFailed(f"mode must be one of {', '.join(UPSTREAM_MODES)}")
    return base_url, client_id, secret, spec.mode


async def _tenant(session: AsyncSession, client_id: str) -> Tenant:
    tenant = await tenants_repository.by_client_id(session, client_id)
    if tenant is None:
        raise errors.NotFound("no tenant with that client_id")
    return tenant


async def set_upstream(
    session: AsyncSession,
    ring: KeyRing,
    settings: Settings,
    client_id: str,
    spec: UpstreamSpec,
    *,
    actor: str,
    request_id: str | None,
) -> UpstreamView:
    """Give a tenant an upstream (or replace it), in the caller's transaction; audited without the secret."""
    base_url, upstream_client_id, secret, mode = _check(spec, settings)
    tenant = await _tenant(session, client_id)
    existing = await repository.upstream_of(session, tenant.id)
    row_id = existing.id if existing is not None else uuid.uuid4()
    sealed = await sealing.seal(session, ring, tenant.id, secret.encode(), secret_aad(tenant.id, row_id))
    await repository.save_upstream(
        session,
        {
            "id": row_id,
            "tenant_id": tenant.id,
            "base_url": base_url,
            "client_id": upstream_client_id,
            "secret_enc": sealed,
            "mode": mode,
        },
    )
    await audit.record(
        session,
        action="tenant.upstream_set",
        actor=actor,
        tenant_id=tenant.id,
        request_id=request_id,
        detail={"base_url": base_url, "upstream_client_id": upstream_client_id, "mode": mode},
    )
    return await get_upstream(session, ring, client_id)


async def get_upstream(session: AsyncSession, ring: KeyRing, client_id: str) -> UpstreamView:
    """A tenant's upstream without its secret.

    Raises:
        NotFound: no such tenant, or it has no upstream.
    """
    tenant = await _tenant(session, client_id)
    row = await repository.upstream_of(session, tenant.id)
    if row is None:
        raise errors.NotFound("this tenant has no upstream")
    return await _view(session, ring, tenant, row)


async def _view(session: AsyncSession, ring: KeyRing, tenant: Tenant, row: TenantUpstream) -> UpstreamView:
    try:
        secret = await sealing.open_(session, ring, row.secret_enc, secret_aad(tenant.id, row.id))
        fingerprint = "hmac-sha256:" + tokens.digest(ring.hash_key, secret.decode()).hex()[:16]
    except EnvelopeError:
        fingerprint = "unreadable"
    return UpstreamView(
        tenant_client_id=tenant.client_id,
        base_url=row.base_url,
        client_id=row.client_id,
        mode=row.mode,
        secret_fingerprint=fingerprint,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def delete_upstream(session: AsyncSession, client_id: str, *, actor: str, request_id: str | None) -> None:
    """Return a tenant to issuer mode. Grants it obtained through the gateway can no longer be refreshed.

    Raises:
        NotFound: no such tenant, or it has no upstream.
    """
    tenant = await _tenant(session, client_id)
    if not await repository.delete_upstream(session, tenant.id):
        raise errors.NotFound("this tenant has no upstream")
    await audit.record(
        session, action="tenant.upstream_removed", actor=actor, tenant_id=tenant.id, request_id=request_id
    )


async def load(runtime: Runtime, client: AuthenticatedClient) -> Upstream:
    """The opened upstream of an authenticated gateway tenant (cached per snapshot).

    Raises:
        StaleClient: the tenant has no upstream any more (the snapshot is out of date).
    """
    cached = _CACHE.get(client.id)
    if cached is not None and cached[0] == client.updated_at:
        return cached[1]
    async with runtime.sessions() as session, session.begin():
        upstream = await open_upstream(session, runtime.ring, client.id)
    if upstream is None:
        raise StaleClient
    if len(_CACHE) >= _CACHE_CAPACITY:
        _CACHE.clear()
    _CACHE[client.id] = (client.updated_at, upstream)
    return upstream


async def open_upstream(session: AsyncSession, ring: KeyRing, tenant_id: uuid.UUID) -> Upstream | None:
    """A tenant's upstream with its secret opened, or None when it has none (or the secret is unreadable)."""
    row = await repository.upstream_of(session, tenant_id)
    if row is None:
        return None
    try:
        secret = await sealing.open_(session, ring, row.secret_enc, secret_aad(tenant_id, row.id))
    except EnvelopeError:
        return None
    return Upstream(
        tenant_id=tenant_id, base_url=row.base_url, client_id=row.client_id, secret=secret.decode(), mode=row.mode
    )
