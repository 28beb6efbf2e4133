"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Response, get

from broker.db import health
from broker.http.deps import RuntimeDep


@get("/healthz", sync_to_thread=False, include_in_schema=False)
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(runtime: RuntimeDep) -> Response[dict[str, Any]]:
    """Ready when the database answers, migrations are at head and the key ring is loaded.

    A read replica, when configured, is reported but does not decide readiness: while it is away the
    primary answers what it would have.
    """
    checks = {"keyring": "ok" if runtime.ring.active_kid else "missing", **await health.check(runtime.engine)}
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
    if runtime.read_engine is not None:
        body["replica"] = await health.reachable(runtime.read_engine)
    return Response(body, status_code=200 if ready else 503)
