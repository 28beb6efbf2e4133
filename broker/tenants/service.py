"""Tenants: creation with a generated secret and administration (authentication: ``tenants.clients``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker import errors, scopes
from broker.audit import service as audit
from broker.crypto import tokens
from broker.db.models import ClientSecret, Tenant
from broker.db.models.tenant import TENANT_KINDS, TENANT_STATUSES
from broker.keys import sealing
from broker.tenants import repository

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.crypto.keyring import KeyRing


@dataclass(frozen=True)
class TenantSpec:
    """What an operator may set on a tenant. ``None`` means "leave as is" on update, "default" on create."""

    name: str | None = None
    kind: str | None = None
    status: str | None = None
    allowed_scopes: tuple[str, ...] | None = None
    default_scopes: tuple[str, ...] | None = None
    access_token_ttl: int | None = None
    refresh_token_ttl: int | None = None
    clear: frozenset[str] = frozenset()
    """On update: lifetime fields to reset to the server default (``access_token_ttl``, ``refresh_token_ttl``)."""


CLEARABLE = frozenset({"access_token_ttl", "refresh_token_ttl"})
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_CURSOR_CHARS = 128


def _validate_scalars(spec: TenantSpec) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if spec.name is not None:
        name = spec.name.strip()
        if not name or len(name) > 200 or "\x00" in name:  # noqa: PLR2004
            raise errors.ValidationFailed("name must be 1 to 200 characters")
        values["name"] = name
    for field, choices in (("kind", TENANT_KINDS), ("status", TENANT_STATUSES)):
        value = getattr(spec, field)
        if value is not None:
            if value not in choices:
                raise errors.ValidationFailed(f"{field} must be one of {', '.join(choices)}")
            values[field] = value
    for field, low, high in (("access_token_ttl", 60, 86_400), ("refresh_token_ttl", 300, 400 * 86_400)):
        value = getattr(spec, field)
        if value is not None:
            if not low <= value <= high:
                raise errors.ValidationFailed(f"{field} must be between {low} and {high} seconds")
            values[field] = value
    return values


def _validate(spec: TenantSpec, current: Tenant | None) -> dict[str, Any]:
    values = _validate_scalars(spec)
    for field in ("allowed_scopes", "default_scopes"):
        value = getattr(spec, field)
        if value is not None:
            if len(value) > scopes.MAX_SCOPES or not all(scopes.is_valid_scope_token(s) for s in value):
                raise errors.ValidationFailed(f"{field} must be a list of valid scope tokens")
            values[field] = sorted(set(value))
    allowed = values.get("allowed_scopes", current.allowed_scopes if current else sorted(scopes.BUILTIN_SCOPES))
    default = values.get("default_scopes", current.default_scopes if current else None)
    if default is None:
        default = sorted(s for s in scopes.DEFAULT_SCOPES if s in allowed)
        values["default_scopes"] = default
    if not set(default) <= set(allowed):
        raise errors.ValidationFailed("default_scopes must be a subset of allowed_scopes")
    if current is None:
        values.setdefault("allowed_scopes", allowed)
    return values


async def create_tenant(
    session: AsyncSession, ring: KeyRing, spec: TenantSpec, *, actor: str, request_id: str | None
) -> tuple[Tenant, str]:
    """Create a tenant with a fresh client id and secret; the secret is returned once and never stored.

    The tenant's data key is created in the same transaction. The caller owns the transaction.
    """
    if spec.name is None:
        raise errors.ValidationFailed("name is required")
    values = _validate(spec, None)
    tenant = Tenant(id=uuid.uuid4(), client_id=tokens.new_client_id(), **values)
    tenant.kind = values.get("kind", "customer")
    tenant.status = values.get("status", "active")
    secret = tokens.new_client_secret()
    session.add(tenant)
    await session.flush()
    session.add(
        ClientSecret(id=uuid.uuid4(), tenant_id=tenant.id, secret_hash=tokens.hash_secret(ring.hash_key, secret))
    )
    await session.flush()
    await sealing.create_data_key(session, ring, tenant.id)
    await session.refresh(tenant)
    await audit.record(
        session,
        action="tenant.created",
        actor=actor,
        tenant_id=tenant.id,
        request_id=request_id,
        detail={"client_id": tenant.client_id, "kind": tenant.kind},
    )
    return tenant, secret


async def update_tenant(
    session: AsyncSession, client_id: str, spec: TenantSpec, *, actor: str, request_id: str | None
) -> Tenant:
    """Apply ``spec`` to the tenant with ``client_id``. The caller owns the transaction."""
    tenant = await repository.by_client_id(session, client_id)
    if tenant is None:
        raise errors.NotFound("no tenant with that client_id")
    unknown = spec.clear - CLEARABLE
    if unknown:
        raise errors.ValidationFailed(f"{min(unknown)} cannot be cleared")
    values = _validate(spec, tenant)
    for field in spec.clear:
        if values.get(field) is not None:
            raise errors.ValidationFailed(f"{field} cannot be both set and cleared")
        values[field] = None
    if not values:
        raise errors.ValidationFailed("nothing to change: name at least one field")
    for key, value in values.items():
        setattr(tenant, key, value)
    tenant.updated_at = datetime.now(UTC)
    await session.flush()
    await audit.record(
        session,
        action="tenant.updated",
        actor=actor,
        tenant_id=tenant.id,
        request_id=request_id,
        detail={"client_id": client_id, "fields": sorted(values)},
    )
    return tenant


async def disable_tenant(session: AsyncSession, client_id: str, *, actor: str, request_id: str | None) -> Tenant:
    """Disable a tenant: it can no longer authenticate, and no exchange may target it.

    Disabling a disabled tenant changes nothing. The caller owns the transaction.

    Raises:
        NotFound: no tenant has ``client_id``.
    """
    tenant = await get_tenant(session, client_id)
    if tenant.status != "disabled":
        tenant.status = "disabled"
        tenant.updated_at = datetime.now(UTC)
        await session.flush()
        await audit.record(
            session,
            action="tenant.disabled",
            actor=actor,
            tenant_id=tenant.id,
            request_id=request_id,
            detail={"client_id": client_id},
        )
    return tenant


async def list_tenants(
    session: AsyncSession, *, limit: int = DEFAULT_PAGE_SIZE, after: str | None = None, kind: str | None = None
) -> tuple[list[Tenant], str | None]:
    """One page of tenants ordered by client id (keyset pagination).

    Args:
        session: The session.
        limit: Page size, 1 to :data:`MAX_PAGE_SIZE`.
        after: Return tenants whose client id sorts after this cursor (the previous page's ``next_after``).
        kind: Only tenants of this kind.

    Returns:
        The page and the cursor of the next page (None on the last page).

    Raises:
        ValidationFailed: ``limit`` out of range, unknown ``kind`` or an over-long cursor.
    """
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise errors.ValidationFailed(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    if kind is not None and kind not in TENANT_KINDS:
        raise errors.ValidationFailed(f"kind must be one of {', '.join(TENANT_KINDS)}")
    if after is not None and (len(after) > MAX_CURSOR_CHARS or "\x00" in after):
        raise errors.ValidationFailed("after must be a client id from a previous page")
    rows = await repository.list_page(session, limit=limit + 1, after=after, kind=kind)
    page = rows[:limit]
    return page, page[-1].client_id if len(rows) > limit else None


async def get_tenant(session: AsyncSession, client_id: str) -> Tenant:
    """The tenant with ``client_id``, or ``NotFound``."""
    tenant = await repository.by_client_id(session, client_id)
    if tenant is None:
        raise errors.NotFound("no tenant with that client_id")
    return tenant
