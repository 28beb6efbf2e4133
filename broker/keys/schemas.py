"""Admin API bodies for keys: usage counts and crypto-shredding. Never key material."""

from __future__ import annotations

import msgspec


class ColumnUsageOut(msgspec.Struct):
    direct: dict[str, int]
    """``v1`` values by the ring key that sealed them."""
    via_data_keys: dict[str, int]
    """``v2`` values by the ring key wrapping their tenant data key (``shredded`` when destroyed)."""
    other: dict[str, int]


class KeyStatusOut(msgspec.Struct):
    active: str
    ring: list[str]
    data_keys: dict[str, int]
    """Tenant data keys by the ring key wrapping them (``shredded`` for destroyed ones)."""
    columns: dict[str, ColumnUsageOut]
    rows_by_key: dict[str, int]
    pending: int
    """Data keys and rows ``broker keys reencrypt`` still has to move to the active key."""


class KeyUseOut(msgspec.Struct):
    kid: str
    active: bool
    in_ring: bool
    data_keys: int
    rows: dict[str, int]
    retirable: bool


class ShredRequest(msgspec.Struct, forbid_unknown_fields=True):
    confirm: str
    """The tenant's client id again: shredding cannot be undone."""


class ShredOut(msgspec.Struct):
    client_id: str
    data_keys: list[str]
    grants_revoked: int
    users_removed: int
    rows_overwritten: int
