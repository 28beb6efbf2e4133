"""Admin API bodies for tenants. Responses never carry a secret or a hash, except the one-time secret on create."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET, UnsetType

if TYPE_CHECKING:
    from broker.db.models import Tenant


class TenantCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    kind: str = "customer"
    allowed_scopes: list[str] | None = None
    default_scopes: list[str] | None = None
    access_token_ttl: int | None = None
    refresh_token_ttl: int | None = None


class TenantUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Absent fields stay as they are; ``null`` for a lifetime resets it to the server default."""

    name: str | UnsetType = UNSET
    status: str | UnsetType = UNSET
    allowed_scopes: list[str] | UnsetType = UNSET
    default_scopes: list[str] | UnsetType = UNSET
    access_token_ttl: int | UnsetType | None = UNSET
    refresh_token_ttl: int | UnsetType | None = UNSET


class TenantOut(msgspec.Struct):
    client_id: str
    name: str
    kind: str
    status: str
    allowed_scopes: list[str]
    default_scopes: list[str]
    access_token_ttl: int | None
    refresh_token_ttl: int | None
    created_at: datetime
    updated_at: datetime


class TenantCreated(TenantOut):
    secret: str
    """Shown once; broker keeps only a keyed hash."""


class TenantPage(msgspec.Struct):
    data: list[TenantOut]
    next_after: str | None
    """Pass as ``after`` to get the next page; null on the last page."""


def tenant_out(tenant: Tenant) -> TenantOut:
    return TenantOut(**_fields(tenant))


def tenant_created(tenant: Tenant, secret: str) -> TenantCreated:
    return TenantCreated(**_fields(tenant), secret=secret)


def _fields(tenant: Tenant) -> dict[str, Any]:
    return {
        "client_id": tenant.client_id,
        "name": tenant.name,
        "kind": tenant.kind,
        "status": tenant.status,
        "allowed_scopes": list(tenant.allowed_scopes),
        "default_scopes": list(tenant.default_scopes),
        "access_token_ttl": tenant.access_token_ttl,
        "refresh_token_ttl": tenant.refresh_token_ttl,
        "created_at": tenant.created_at,
        "updated_at": tenant.updated_at,
    }
