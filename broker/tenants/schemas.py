"""Admin API bodies for tenants. Responses never carry a secret or a hash, except the one-time secret on create."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET, UnsetType

if TYPE_CHECKING:
    from broker.db.models import Tenant
    from broker.tenants.secrets import SecretView


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


class SecretRotate(msgspec.Struct, forbid_unknown_fields=True):
    overlap_seconds: int = 86_400
    """How long the tenant's older live secrets keep working (0 to 2592000)."""


class SecretOut(msgspec.Struct):
    id: uuid.UUID
    algorithm: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    live: bool


class SecretCreated(SecretOut):
    secret: str
    """Shown once; broker keeps only a keyed hash."""
    others: list[SecretOut]
    """The tenant's other secrets, with the expiry the rotation gave them."""


class SecretList(msgspec.Struct):
    data: list[SecretOut]


def secret_out(secret: SecretView) -> SecretOut:
    return SecretOut(**_secret_fields(secret))


def secret_created(secret: SecretView, value: str, others: list[SecretView]) -> SecretCreated:
    return SecretCreated(**_secret_fields(secret), secret=value, others=[secret_out(s) for s in others])


def _secret_fields(secret: SecretView) -> dict[str, Any]:
    return {
        "id": secret.id,
        "algorithm": secret.algorithm,
        "created_at": secret.created_at,
        "last_used_at": secret.last_used_at,
        "expires_at": secret.expires_at,
        "revoked_at": secret.revoked_at,
        "live": secret.live,
    }
