"""Admin API bodies for admin keys. A key's value appears only in the create response."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from broker.db.models import AdminKey


class AdminKeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    scope: str = "write"


class AdminKeyOut(msgspec.Struct):
    id: uuid.UUID
    name: str
    scope: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class AdminKeyCreated(AdminKeyOut):
    key: str
    """Shown once; broker keeps only a keyed digest."""


class AdminKeyList(msgspec.Struct):
    data: list[AdminKeyOut]


def key_out(key: AdminKey) -> AdminKeyOut:
    return AdminKeyOut(**_fields(key))


def key_created(key: AdminKey, value: str) -> AdminKeyCreated:
    return AdminKeyCreated(**_fields(key), key=value)


def _fields(key: AdminKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "scope": key.scope,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
    }
