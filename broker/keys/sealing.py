"""Seal tenant data under the tenant's data key (DEK); open ``v1`` and ``v2`` envelopes.

Every tenant-data column (refresh tokens, retry pairs, user tokens, identity) is written with
:func:`seal` and read with :func:`open_`.

Invariants:
    * :func:`seal` writes ``v2.<dek_id>...`` under the tenant's one live DEK. A tenant without one
      (created before data keys, or shredded) gets a new DEK, inserted in the caller's transaction, so
      it commits or rolls back with the data it protects.
    * The hot path costs no query: unwrapped DEKs come from the ring's process cache
      (:class:`broker.crypto.datakeys.DataKeyCache`). On a miss, one indexed query that only returns
      unshredded keys. A key written by the current, uncommitted transaction is never cached (it might
      roll back); everything cached was committed.
    * Shredding on any replica takes effect here within ``BROKER_DATA_KEY_CACHE_SECONDS``: cache entries
      expire, and a miss never returns a shredded key. The shredding process evicts its own cache at
      once. Until then, a replica may still *seal* new values under the old key; they are unreadable
      afterwards, which every reader treats as data that is gone (never a 500), and shredding itself
      revokes and tombstones everything that existed when it ran.
    * ``v1`` envelopes (under a ring key directly) still open, until ``broker keys reencrypt`` moved them.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from broker.crypto import datakeys, envelope
from broker.crypto.envelope import EnvelopeError
from broker.keys import repository

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.crypto.datakeys import DataKey
    from broker.crypto.keyring import KeyRing


async def seal(session: AsyncSession, ring: KeyRing, tenant_id: uuid.UUID, plaintext: bytes, aad: bytes) -> str:
    """Encrypt tenant data under the tenant's data key, inside the caller's transaction."""
    data_key = await current_data_key(session, ring, tenant_id)
    return envelope.seal_with_data_key(str(data_key.id), data_key.key, plaintext, aad)


async def open_(session: AsyncSession, ring: KeyRing, sealed: str, aad: bytes) -> bytes:
    """Decrypt a ``v1`` or ``v2`` envelope.

    Raises:
        EnvelopeError: unknown version, a ring key or data key that is missing or shredded, or a
            ciphertext that does not open under its key and ``aad`` (tampered or moved).
    """
    version = envelope.version_of(sealed)
    if version == envelope.VERSION:
        return envelope.open_(ring, sealed, aad)
    if version != envelope.DATA_KEY_VERSION:
        raise EnvelopeError("unknown envelope version")
    try:
        dek_id = uuid.UUID(envelope.key_id_of(sealed))
    except ValueError:
        raise EnvelopeError("malformed data key id") from None
    data_key = await data_key_by_id(session, ring, dek_id)
    return envelope.open_with_data_key(data_key.key, sealed, aad)


async def current_data_key(session: AsyncSession, ring: KeyRing, tenant_id: uuid.UUID) -> DataKey:
    """The tenant's live data key, creating it if it has none (in the caller's transaction)."""
    cached = ring.data_keys.current(tenant_id)
    if cached is not None:
        return cached
    row = await repository.live_key_of_tenant(session, tenant_id)
    if row is None:
        await create_data_key(session, ring, tenant_id)
        row = await repository.live_key_of_tenant(session, tenant_id)
        if row is None:  # pragma: no cover - the insert or a concurrent winner guarantees a row
            msg = "tenant data key vanished while being created"
            raise RuntimeError(msg)
    data_key = datakeys.unwrap(ring, tenant_id, row.id, row.wrapped)
    if not row.mine:
        ring.data_keys.put(data_key, current=True)
    return data_key


async def hot_data_key(runtime: Runtime, tenant_id: uuid.UUID) -> DataKey:
    """The tenant's live data key for a hot path.

    From the ring's cache, else loaded (or created) in a short transaction of its own, which commits
    before the key seals anything.
    """
    cached = runtime.ring.data_keys.current(tenant_id)
    if cached is not None:
        return cached
    async with runtime.sessions() as session, session.begin():
        return await current_data_key(session, runtime.ring, tenant_id)


async def data_key_by_id(session: AsyncSession, ring: KeyRing, dek_id: uuid.UUID) -> DataKey:
    """A live data key by id.

    Raises:
        EnvelopeError: no such key, or it was shredded.
    """
    cached = ring.data_keys.get(dek_id)
    if cached is not None:
        return cached
    row = await repository.live_key_by_id(session, dek_id)
    if row is None:
        raise EnvelopeError("the data key was shredded or never existed")
    data_key = datakeys.unwrap(ring, row.tenant_id, row.id, row.wrapped)
    if not row.mine:
        ring.data_keys.put(data_key, current=False)
    return data_key


async def create_data_key(session: AsyncSession, ring: KeyRing, tenant_id: uuid.UUID) -> None:
    """Give the tenant a live data key unless it has one (concurrent creators: one wins, the rest yield).

    Runs in the caller's transaction; called when a tenant is created and lazily on first use.
    """
    dek_id = uuid.uuid4()
    wrapped = datakeys.wrap(ring, tenant_id, dek_id, datakeys.new_data_key_material())
    await repository.insert_key(session, dek_id, tenant_id, wrapped)
