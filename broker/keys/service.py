"""Key ring usage, retirement checks, and crypto-shredding a tenant's data.

Invariants:
    * Keys live in configuration, never in the database: nothing here stores a ring key. The database
      holds tenant data keys wrapped by ring keys, and ciphertexts naming the key that sealed them, so
      usage is counted from the envelopes themselves.
    * A ring key is *needed* while a live data key is wrapped by it or a ``v1`` value is sealed under
      it. Retiring it (``broker keys retire``) is refused until both counts are zero, and a server
      whose ring lacks a needed key refuses to start (:func:`missing_keys`).
    * Shredding a tenant destroys its live data key and, in the same transaction, revokes every grant
      it owns, tombstones its users, drops retry pairs and overwrites any ``v1`` values of its rows:
      nothing of the tenant's remains readable, and its tokens fail as revoked (never as errors). The
      holders of grants shared from its data hear of it (``grant.revoked``, reason ``tenant.shredded``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import structlog
from sqlalchemy.exc import SQLAlchemyError

from broker import errors
from broker.audit import service as audit
from broker.crypto.keyring import KeyRingError
from broker.keys import repository
from broker.keys.columns import TENANT_DATA
from broker.webhooks import outbox
from broker.webhooks import service as webhooks

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.crypto.keyring import KeyRing

log = structlog.get_logger("broker.keys")
SHREDDED = "shredded"
WEBHOOK_SECRETS = "webhook_endpoints.secrets"
"""Operator-level secrets (partners' webhook signing secrets) are sealed directly under ring keys."""
WEBHOOK_DELIVERY_TOKENS = "webhook_deliveries.token_enc"
"""Shared refresh tokens queued for partners' webhooks, sealed under the owner's data key (reported only)."""


@dataclass(frozen=True)
class ColumnUsage:
    """How one encrypted column's values are protected.

    ``direct`` counts ``v1`` values by the ring key that sealed them; ``via_data_keys`` counts ``v2``
    values by the ring key wrapping their data key (``shredded``/``unknown`` when it is gone).
    """

    direct: dict[str, int] = field(default_factory=dict)
    via_data_keys: dict[str, int] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyStatus:
    """What ``broker keys status`` and ``GET /admin/v1/keys`` report."""

    active: str
    ring: list[str]
    data_keys: dict[str, int]
    columns: dict[str, ColumnUsage]
    ring_sealed: ClassVar[frozenset[str]] = frozenset({WEBHOOK_SECRETS})
    """Columns whose values stay sealed directly under a ring key (re-encryption reseals them in place)."""

    def rows_by_key(self) -> dict[str, int]:
        """Rows that need each ring key, directly or through their data key."""
        totals: dict[str, int] = {}
        for usage in self.columns.values():
            for source in (usage.direct, usage.via_data_keys):
                for kid, count in source.items():
                    totals[kid] = totals.get(kid, 0) + count
        return totals

    def pending(self) -> int:
        """Data keys and values that re-encryption still has to move to the active key."""
        keys = sum(n for kid, n in self.data_keys.items() if kid not in {self.active, SHREDDED})
        rows = 0
        for name, usage in self.columns.items():
            if name == WEBHOOK_DELIVERY_TOKENS:  # reported only: queued copies, under data keys
                continue
            stays = {self.active} if name in self.ring_sealed else set()
            rows += sum(n for kid, n in usage.direct.items() if kid not in stays)
        return keys + rows


async def status(session: AsyncSession, ring: KeyRing) -> KeyStatus:
    """Count, per ring key, the data keys it wraps and the rows that need it, per column. Full scans."""
    data_keys = await repository.data_keys_by_ring_key(session)
    columns: dict[str, ColumnUsage] = {}
    for table in TENANT_DATA:
        for column in table.columns:
            usage = ColumnUsage()
            for version, kid, count in await repository.column_usage(session, table.name, column.column):
                target = {"v1": usage.direct, "v2": usage.via_data_keys}.get(version, usage.other)
                target[kid if version in {"v1", "v2"} else version] = count
            columns[table.label(column)] = usage
    columns[WEBHOOK_SECRETS] = ColumnUsage(direct=await webhooks.secret_key_usage(session))
    # Shared refresh tokens queued for partners' webhooks are sealed under the owner's data key.
    deliveries = ColumnUsage()
    for version, kid, count in await repository.column_usage(session, "webhook_deliveries", "token_enc"):
        {"v1": deliveries.direct, "v2": deliveries.via_data_keys}.get(version, deliveries.other)[kid] = count
    columns[WEBHOOK_DELIVERY_TOKENS] = deliveries
    return KeyStatus(active=ring.active_kid, ring=list(ring.keys), data_keys=data_keys, columns=columns)


@dataclass(frozen=True)
class KeyUse:
    """What still needs one ring key."""

    kid: str
    data_keys: int
    rows: dict[str, int]

    @property
    def in_use(self) -> bool:
        """Whether anything still needs the key."""
        return self.data_keys > 0 or any(self.rows.values())

    def describe(self) -> str:
        """One line for an operator."""
        parts = [f"{self.data_keys} data key(s)"] + [f"{n} {table} row(s)" for table, n in self.rows.items() if n]
        return f"key {self.kid!r} is still needed by " + ", ".join(parts)


async def key_use(session: AsyncSession, kid: str) -> KeyUse:
    """How many live data keys and ``v1`` rows need ring key ``kid``.

    Cheap: data keys are one per tenant, and ``v1`` rows are found through their partial indexes.
    """
    rows = {table.name: await repository.count_v1_rows_under(session, table, kid) for table in TENANT_DATA}
    rows["webhook_endpoints"] = (await webhooks.secret_key_usage(session)).get(kid, 0)
    return KeyUse(kid=kid, data_keys=await repository.count_keys_wrapped_by(session, kid), rows=rows)


async def check_retire(session: AsyncSession, ring: KeyRing, kid: str) -> KeyUse:
    """Refuse to retire ``kid`` while it is active or anything still needs it.

    Raises:
        Conflict: ``kid`` is the active key, or data keys or rows still need it.
    """
    if kid == ring.active_kid:
        raise errors.Conflict(f"key {kid!r} is the active key: rotate to a new key first")
    async with session.begin():
        use = await key_use(session, kid)
    if use.in_use:
        raise errors.Conflict(use.describe() + ": run `broker keys reencrypt` with the new active key first")
    return use


async def missing_keys(session: AsyncSession, ring: KeyRing) -> list[KeyUse]:
    """Ring keys that data keys or rows need but ``ring`` lacks (a key retired too early)."""
    async with session.begin():
        needed = await repository.wrapped_key_ids(session)
        for table in TENANT_DATA:
            needed |= await repository.v1_key_ids(session, table)
        needed |= set(await webhooks.secret_key_usage(session))
        return [await key_use(session, kid) for kid in sorted(needed - set(ring.keys))]


@dataclass(frozen=True)
class Shredded:
    """What shredding a tenant destroyed."""

    client_id: str
    data_keys: list[str]
    grants_revoked: int
    users_removed: int
    rows_overwritten: int


async def shred_tenant(
    session: AsyncSession, ring: KeyRing, client_id: str, *, actor: str, request_id: str | None
) -> Shredded:
    """Crypto-shred a tenant's data (see the module invariants). Runs its own transaction.

    The tenant row is locked first: every insert of a sealed row of the tenant holds a key-share lock on
    it (the foreign key), so shredding waits for in-flight writes and sees them. The tenant stays
    usable; its next sealed value gets a new data key. Disable it first to offboard it.

    Raises:
        NotFound: no tenant has ``client_id``.
    """
    now = datetime.now(UTC)
    async with session.begin():
        tenant = await repository.lock_tenant(session, client_id)
        if tenant is None:
            raise errors.NotFound("no tenant with that client_id")
        keys = await repository.shred_keys(session, tenant.id, now)
        grants, shared = await repository.revoke_tenant_grants(session, tenant.id, now)
        users = await repository.tombstone_tenant_users(session, tenant.id, now)
        overwritten = await repository.overwrite_tenant_v1_values(session, tenant.id, SHREDDED)
        detail: dict[str, Any] = {
            "client_id": client_id,
            "data_keys": [str(k) for k in keys],
            "grants_revoked": grants,
            "users_removed": users,
            "rows_overwritten": overwritten,
        }
        await audit.record(
            session, action="tenant.shredded", actor=actor, tenant_id=tenant.id, request_id=request_id, detail=detail
        )
        await outbox.grants_revoked(session, ring, shared, reason="tenant.shredded")
    ring.data_keys.evict_tenant(tenant.id)
    return Shredded(client_id, [str(k) for k in keys], grants, users, overwritten)


async def check_ring_on_start(runtime: Runtime) -> None:
    """Refuse to serve with a ring that lacks a key still in use; warn if the database cannot say.

    Raises:
        KeyRingError: data keys or rows need a ring key the configuration no longer holds.
    """
    try:
        async with runtime.sessions() as session:
            missing = await missing_keys(session, runtime.ring)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.warning("could not check the key ring against the database", error=type(exc).__name__)
        return
    if missing:
        detail = "; ".join(use.describe() for use in missing)
        msg = f"{detail}, but the configured key ring lacks it: restore the key, then re-encrypt and retire it"
        raise KeyRingError(msg)
