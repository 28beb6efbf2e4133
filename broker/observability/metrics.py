"""Prometheus metrics: counters, fixed-bucket histograms and gauges, rendered in the text format.

Deliberately small (no ``prometheus_client``): an observation is one dict lookup by a label tuple and
one or two float additions, with no lock and no string formatting. Each worker process serves its
requests on one event-loop thread and nothing observes from another thread, so plain dict and list
updates are safe.

Several processes, one exposition. granian runs ``BROKER_WORKERS`` worker processes and a scrape lands
on any one of them. So that every scrape sees the whole server, each worker writes a snapshot of its
counters and histograms to ``<dir>/<pid>.json`` once a second (:func:`flushing`) when a metrics
directory is configured (``broker serve`` makes one per server and clears it at start), and
``/metrics`` sums its own live values with the other workers' snapshots. Figures of other workers are
therefore up to about a second old; a dead worker's last snapshot stays, so counters never go back.

Labels are closed sets chosen by the code (route templates, grant types, outcomes): never a token, a
secret, a client id, a user id or a raw path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import tempfile
from abc import ABC, abstractmethod
from bisect import bisect_left
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable

Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[str, ...]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: from a cached hot-path answer (~1 ms) to a request near the statement timeout."""
SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 1000, 10_000)
"""Counts (grants in a revocation cascade)."""
FLUSH_SECONDS = 1.0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: Labels, extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(value)


class Metric(ABC):
    """A named family of series, one per label tuple."""

    kind: Kind

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = labels

    @abstractmethod
    def snapshot(self) -> dict[str, list[float]]:
        """The series keyed by their labels joined with a unit separator (what a worker writes for the others)."""

    @abstractmethod
    def render(self, merged: dict[Labels, list[float]]) -> list[str]:
        """Exposition lines for ``merged`` series."""


class Counter(Metric):
    """A monotonically increasing count."""

    kind: Kind = "counter"

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[Labels, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        """Add ``amount`` to the series of ``labels`` (positional, in declaration order)."""
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def snapshot(self) -> dict[str, list[float]]:
        """See :meth:`Metric.snapshot`."""
        return {"\x1f".join(k): [v] for k, v in self.values.items()}

    def live(self) -> dict[Labels, list[float]]:
        """This process's series."""
        return {k: [v] for k, v in self.values.items()}

    def render(self, merged: dict[Labels, list[float]]) -> list[str]:
        """See :meth:`Metric.render`."""
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v[0])}" for k, v in sorted(merged.items())]


class Histogram(Metric):
    """Observations counted into fixed cumulative buckets, plus their sum and count."""

    kind: Kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = buckets
        self.values: dict[Labels, list[float]] = {}

    def observe(self, value: float, *labels: str) -> None:
        """Count ``value`` in the series of ``labels``: per-bucket (not yet cumulative), sum, count."""
        series = self.values.get(labels)
        if series is None:
            series = self.values[labels] = [0.0] * (len(self.buckets) + 3)
        series[bisect_left(self.buckets, value)] += 1  # the first bound >= value; past the last: +Inf
        series[-2] += value
        series[-1] += 1

    def snapshot(self) -> dict[str, list[float]]:
        """See :meth:`Metric.snapshot`."""
        return {"\x1f".join(k): list(v) for k, v in self.values.items()}

    def live(self) -> dict[Labels, list[float]]:
        """This process's series."""
        return {k: list(v) for k, v in self.values.items()}

    def render(self, merged: dict[Labels, list[float]]) -> list[str]:
        """See :meth:`Metric.render`."""
        lines = []
        for key, series in sorted(merged.items()):
            cumulative = 0.0
            for bound, count in zip((*self.buckets, math.inf), series, strict=False):
                cumulative += count
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {_number(cumulative)}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(series[-2])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {_number(series[-1])}")
        return lines


class Gauge(Metric):
    """A value read when scraped (by a collector), never accumulated."""

    kind: Kind = "gauge"

    def snapshot(self) -> dict[str, list[float]]:
        """Nothing: a gauge is read by the worker that answers the scrape, not shared through snapshots."""
        return {}

    def render(self, merged: dict[Labels, list[float]]) -> list[str]:
        """See :meth:`Metric.render`."""
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v[0])}" for k, v in sorted(merged.items())]


class SampledGauge(Counter):
    """A per-process value set by a sampler just before each snapshot and scrape (say, pool usage).

    Merged across workers by summing, like a counter: the server's total.
    """

    kind: Kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        """Set the series of ``labels`` to ``value``."""
        self.values[labels] = value


class Registry:
    """The process's metrics, and where the other workers' snapshots are (if anywhere)."""

    def __init__(self) -> None:
        self.metrics: dict[str, Counter | Histogram] = {}
        self.directory: Path | None = None
        self.samplers: list[Callable[[], None]] = []

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        """Declare a counter (at import time of the module that owns it)."""
        metric = Counter(name, help_text, labels)
        self.metrics[name] = metric
        return metric

    def histogram(
        self, name: str, help_text: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = LATENCY_BUCKETS
    ) -> Histogram:
        """Declare a histogram."""
        metric = Histogram(name, help_text, labels, buckets)
        self.metrics[name] = metric
        return metric

    def sampled_gauge(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> SampledGauge:
        """Declare a gauge that samplers set (see :class:`SampledGauge`)."""
        metric = SampledGauge(name, help_text, labels)
        self.metrics[name] = metric
        return metric

    def sample(self) -> None:
        """Run every sampler (a failing sampler leaves its gauges as they were)."""
        for sampler in self.samplers:
            with contextlib.suppress(Exception):
                sampler()

    def reset(self) -> None:
        """Forget every observation (tests only)."""
        for metric in self.metrics.values():
            metric.values.clear()

    def write_snapshot(self) -> None:
        """Write this process's values to ``<dir>/<pid>.json`` atomically (when a directory is set)."""
        if self.directory is None:
            return
        self.sample()
        data = {name: metric.snapshot() for name, metric in self.metrics.items() if metric.values}
        target = self.directory / f"{os.getpid()}.json"
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        Path(temporary).replace(target)

    def _others(self) -> Iterable[dict[str, dict[str, list[float]]]]:
        if self.directory is None:
            return
        own = f"{os.getpid()}.json"
        for path in self.directory.glob("*.json"):
            if path.name == own:
                continue
            with contextlib.suppress(OSError, ValueError):
                yield json.loads(path.read_text())

    def merged(self) -> dict[str, dict[Labels, list[float]]]:
        """Every counter and histogram: this process's live values plus every other worker's snapshot."""
        result = {name: metric.live() for name, metric in self.metrics.items()}
        for other in self._others():
            for name, series in other.items():
                target = result.get(name)
                if target is None:
                    continue
                for key, values in series.items():
                    labels = tuple(key.split("\x1f")) if key else ()
                    current = target.get(labels)
                    if current is None or len(current) != len(values):
                        target[labels] = list(values)
                    else:
                        target[labels] = [a + b for a, b in zip(current, values, strict=True)]
        return result

    def render(self, gauges: Iterable[tuple[Gauge, dict[Labels, float]]] = ()) -> str:
        """The whole exposition (text format 0.0.4): counters, histograms, then the scraped gauges."""
        lines: list[str] = []
        self.sample()
        merged = self.merged()
        for name, metric in sorted(self.metrics.items()):
            lines += [f"# HELP {name} {metric.help}", f"# TYPE {name} {metric.kind}"]
            lines += metric.render(merged.get(name, {}))
        for gauge, values in gauges:
            lines += [f"# HELP {gauge.name} {gauge.help}", f"# TYPE {gauge.name} gauge"]
            lines += gauge.render({k: [v] for k, v in values.items()})
        return "\n".join(lines) + "\n"


REGISTRY = Registry()

HTTP_REQUESTS = REGISTRY.counter(
    "broker_http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ("method", "route", "status"),
)
HTTP_DURATION = REGISTRY.histogram(
    "broker_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by method, route template and status.",
    ("method", "route", "status"),
)
TOKENS_ISSUED = REGISTRY.counter(
    "broker_tokens_issued_total", "Token pairs issued by /oauth/token, by grant type.", ("grant_type",)
)
EXCHANGES = REGISTRY.counter(
    "broker_token_exchanges_total", "Successful token exchanges, by subject token type.", ("subject_token_type",)
)
REVOCATIONS = REGISTRY.counter(
    "broker_revocations_total",
    "Revocations, by reason (token.revoked, refresh_token.replayed, party.withdrawn, admin.revoked, ...).",
    ("reason",),
)
CASCADE_SIZE = REGISTRY.histogram(
    "broker_revocation_cascade_grants",
    "Grants revoked by one revocation (the grant and its descendants).",
    ("reason",),
    SIZE_BUCKETS,
)
REPLAYS = REGISTRY.counter(
    "broker_refresh_replays_detected_total", "Rotated refresh tokens presented again outside the grace window."
)
AUTH_FAILURES = REGISTRY.counter(
    "broker_auth_failures_total", "Failed authentications, by kind (client or admin).", ("kind",)
)
WEBHOOK_DELIVERIES = REGISTRY.counter(
    "broker_webhook_deliveries_total",
    "Webhook delivery attempts recorded, by outcome (delivered, retry, dead).",
    ("outcome",),
)
UPSTREAM_REQUESTS = REGISTRY.counter(
    "broker_upstream_requests_total",
    "Gateway mode: requests to tenants' upstreams, by upstream route and outcome (ok, refused, failed,"
    " unavailable, circuit_open). Never labelled by tenant, URL or credential.",
    ("route", "outcome"),
)
UPSTREAM_DURATION = REGISTRY.histogram(
    "broker_upstream_request_duration_seconds",
    "Gateway mode: time of one upstream request (each attempt), by upstream route.",
    ("route",),
)
UPSTREAM_CALLS = REGISTRY.counter(
    "broker_upstream_calls_total",
    "Gateway mode: attempts of queued upstream revocations and user removals, by operation and outcome"
    " (completed, retry).",
    ("kind", "outcome"),
)
INTROSPECTION_READS = REGISTRY.counter(
    "broker_introspection_reads_total",
    "Introspections with a read replica configured, by who answered (replica, or primary after a miss).",
    ("source",),
)

POOL_CONNECTIONS = REGISTRY.sampled_gauge(
    "broker_db_pool_connections",
    "Database connections of this server's workers, by pool (orm, hot, read) and state (in_use, idle, max).",
    ("pool", "state"),
)
OUTBOX_DEPTH = Gauge(
    "broker_webhook_outbox_depth", "Webhook deliveries in the outbox, by status (pending, dead).", ("status",)
)
OUTBOX_OLDEST = Gauge(
    "broker_webhook_outbox_oldest_pending_seconds", "Age of the oldest pending webhook delivery (0 when none)."
)


@contextlib.asynccontextmanager
async def flushing(registry: Registry = REGISTRY, *, every: float = FLUSH_SECONDS) -> AsyncIterator[None]:
    """Write this worker's snapshot every ``every`` seconds during the block, and once more at its end."""
    if registry.directory is None:
        yield
        return

    async def loop() -> None:
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(OSError):
                registry.write_snapshot()

    task = asyncio.create_task(loop(), name="metrics-flush")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(OSError):
            registry.write_snapshot()


def use_directory(path: Path | None) -> None:
    """Share metrics with the other workers through ``path`` (None: this process only)."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
    REGISTRY.directory = path


def clear_directory(path: Path) -> None:
    """Remove the snapshots of a previous server (``broker serve`` calls this before starting workers)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.json"):
        with contextlib.suppress(OSError):
            stale.unlink()
