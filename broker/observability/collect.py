"""What ``/metrics`` reads at scrape time: connection pool usage and the webhook outbox.

Pool usage is per process and set on the registry's sampled gauge (so it is summed over the workers);
the outbox is global, read from the database by whichever worker is scraped, and cached for a few
seconds so that frequent scrapes by several Prometheus servers cost one small indexed query.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import text

from broker.observability import metrics

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.ext.asyncio import AsyncEngine

    from broker.context import Runtime

log = structlog.get_logger("broker.metrics")

OUTBOX_CACHE_SECONDS = 5.0
_OUTBOX = text(
    "SELECT status, count(*) AS n, "
    "coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')), 0) AS oldest "
    "FROM webhook_deliveries WHERE status IN ('pending', 'dead') GROUP BY status"
)


def _engine_usage(engine: AsyncEngine) -> tuple[int, int, int]:
    pool = engine.sync_engine.pool
    in_use = int(getattr(pool, "checkedout", lambda: 0)())
    idle = int(getattr(pool, "checkedin", lambda: 0)())
    size = int(getattr(pool, "size", lambda: 0)()) + max(0, int(getattr(pool, "_max_overflow", 0)))
    return in_use, idle, size


def pool_sampler(runtime: Runtime) -> Callable[[], None]:
    """A sampler that sets ``broker_db_pool_connections`` from this process's pools."""

    def sample() -> None:
        pools = {"orm": _engine_usage(runtime.engine), "hot": runtime.hot.usage()}
        if runtime.read is not None:
            pools["read"] = runtime.read.usage()
        for name, (in_use, idle, size) in pools.items():
            metrics.POOL_CONNECTIONS.set(in_use, name, "in_use")
            metrics.POOL_CONNECTIONS.set(idle, name, "idle")
            metrics.POOL_CONNECTIONS.set(size, name, "max")

    return sample


class OutboxGauges:
    """The outbox depth by status and the age of its oldest pending row, cached for a few seconds."""

    def __init__(self, engine: AsyncEngine, ttl: float = OUTBOX_CACHE_SECONDS) -> None:
        self._engine = engine
        self._ttl = ttl
        self._read_at = -float("inf")
        self._depth: dict[metrics.Labels, float] = {}
        self._oldest: dict[metrics.Labels, float] = {}

    async def read(self) -> list[tuple[metrics.Gauge, dict[metrics.Labels, float]]]:
        """The gauges, from the cache or one query (a failed query leaves the gauges out)."""
        if time.monotonic() - self._read_at >= self._ttl:
            try:
                async with self._engine.connect() as connection:
                    rows = (await connection.execute(_OUTBOX)).all()
            except Exception as exc:  # noqa: BLE001 - the database may be away; the scrape still answers
                log.warning("metrics: outbox not read", error=type(exc).__name__)
                return []
            found = {row.status: row for row in rows}
            self._depth = {
                (status,): float(found[status].n if status in found else 0) for status in ("pending", "dead")
            }
            self._oldest = {(): float(found["pending"].oldest) if "pending" in found else 0.0}
            self._read_at = time.monotonic()
        return [(metrics.OUTBOX_DEPTH, self._depth), (metrics.OUTBOX_OLDEST, self._oldest)]
