"""Tenant data keys (DEKs): generated per tenant, stored wrapped by the key ring, cached unwrapped.

Invariants:
    * A DEK is 256 random bits. Its stored form is a ``v1`` envelope under a ring key whose AAD binds
      it to its tenant and its own id (``tenant_keys.key|<tenant>|<dek id>``), so a wrapped key copied
      to another row or tenant does not unwrap.
    * A DEK's material never changes once created; rotating the ring key only rewraps it. Shredding
      destroys the wrapped copy, after which the DEK can never be loaded again.
    * The process cache holds unwrapped DEKs for at most ``ttl`` seconds. Everything read from the
      cache was read from the database, committed, within the last ``ttl`` seconds; so a DEK shredded
      on another replica stops being used here within ``ttl`` (see :mod:`broker.keys.sealing`).
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker.crypto import envelope

if TYPE_CHECKING:
    from broker.crypto.keyring import KeyRing

DATA_KEY_BYTES = 32
DEFAULT_TTL_SECONDS = 60.0
MAX_CACHED = 50_000


@dataclass(frozen=True, repr=False)
class DataKey:
    """An unwrapped tenant data key. ``repr`` never shows the key."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    key: bytes

    def __repr__(self) -> str:
        return f"DataKey(id={self.id}, tenant_id={self.tenant_id}, key=***)"


def new_data_key_material() -> bytes:
    """Fresh key material for a DEK."""
    return secrets.token_bytes(DATA_KEY_BYTES)


def wrap_aad(tenant_id: uuid.UUID, dek_id: uuid.UUID) -> bytes:
    """The AAD binding a wrapped DEK to its tenant and id."""
    return envelope.aad_for("tenant_keys", "key", tenant_id, dek_id)


def wrap(ring: KeyRing, tenant_id: uuid.UUID, dek_id: uuid.UUID, key: bytes) -> str:
    """Seal DEK material under the ring's active key."""
    return envelope.seal(ring, key, wrap_aad(tenant_id, dek_id))


def unwrap(ring: KeyRing, tenant_id: uuid.UUID, dek_id: uuid.UUID, wrapped: str) -> DataKey:
    """Open a wrapped DEK.

    Raises:
        EnvelopeError: the ring lacks the wrapping key, or the wrapped key was tampered with or moved.
    """
    key = envelope.open_(ring, wrapped, wrap_aad(tenant_id, dek_id))
    if len(key) != DATA_KEY_BYTES:
        raise envelope.EnvelopeError("a data key has the wrong length")
    return DataKey(id=dek_id, tenant_id=tenant_id, key=key)


class DataKeyCache:
    """Unwrapped DEKs by id, and each tenant's current DEK, each entry valid for ``ttl`` seconds.

    Thread-safe (the test client and granian may call from several threads); ``ttl`` 0 disables caching.
    A plain class, not a dataclass: Litestar would try to inspect a dataclass reachable from the runtime.
    """

    def __init__(self, ttl: float = DEFAULT_TTL_SECONDS) -> None:
        self.ttl = ttl
        self._by_id: dict[uuid.UUID, tuple[DataKey, float]] = {}
        self._current: dict[uuid.UUID, tuple[uuid.UUID, float]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DataKeyCache(ttl={self.ttl}, cached={len(self._by_id)})"

    def get(self, dek_id: uuid.UUID) -> DataKey | None:
        """The cached DEK with ``dek_id``, unless expired."""
        with self._lock:
            entry = self._by_id.get(dek_id)
            if entry is None:
                return None
            if entry[1] <= time.monotonic():
                del self._by_id[dek_id]
                return None
            return entry[0]

    def current(self, tenant_id: uuid.UUID) -> DataKey | None:
        """The tenant's current DEK, unless it or the pointer to it expired."""
        with self._lock:
            entry = self._current.get(tenant_id)
            if entry is None:
                return None
            if entry[1] <= time.monotonic():
                del self._current[tenant_id]
                return None
            dek_id = entry[0]
        return self.get(dek_id)

    def put(self, data_key: DataKey, *, current: bool) -> None:
        """Cache ``data_key`` (read from committed rows); ``current`` also makes it its tenant's current DEK."""
        if self.ttl <= 0:
            return
        expires = time.monotonic() + self.ttl
        with self._lock:
            if len(self._by_id) >= MAX_CACHED or len(self._current) >= MAX_CACHED:
                self._by_id.clear()
                self._current.clear()
            self._by_id[data_key.id] = (data_key, expires)
            if current:
                self._current[data_key.tenant_id] = (data_key.id, expires)

    def evict_tenant(self, tenant_id: uuid.UUID) -> None:
        """Forget every cached DEK of ``tenant_id`` (after shredding it in this process)."""
        with self._lock:
            self._current.pop(tenant_id, None)
            for dek_id in [k for k, (dk, _) in self._by_id.items() if dk.tenant_id == tenant_id]:
                del self._by_id[dek_id]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._by_id.clear()
            self._current.clear()
