"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from sqlalchemy import text

from broker.db import migrate
from broker.http.deps import RuntimeDep


@get("/healthz", sync_to_thread=False, include_in_schema=False)
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(runtime: RuntimeDep) -> Response[dict[str, Any]]:
    """Ready when the database answers, migrations are at head and the key ring is loaded."""
    checks: dict[str, str] = {"keyring": "ok" if runtime.ring.active_kid else "missing"}
    try:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            current = await migrate.current_revision(connection)
        checks["database"] = "ok"
        checks["migrations"] = (
            "ok" if current == migrate.head_revision() else f"at {current}, head is {migrate.head_revision()}"
        )
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure as not ready
        checks["database"] = f"unavailable ({type(exc).__name__})"
    ready = all(v == "ok" for v in checks.values())
    return Response({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)
