"""``GET /metrics``: the Prometheus text exposition, optionally behind a bearer token."""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request, Response, get

from broker import errors
from broker.http.auth import bearer_token
from broker.observability import metrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@get("/metrics", include_in_schema=False)
async def exposition(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Every counter and histogram of this server's workers, and the pool and outbox gauges.

    With ``BROKER_METRICS_TOKEN`` set, only ``Authorization: Bearer <that token>`` may read it.

    Raises:
        Unauthorized: a token is configured and was not presented.
    """
    runtime = request.app.state.runtime
    expected = runtime.settings.metrics_token
    if expected is not None:
        presented = bearer_token(request.headers) or ""
        if not hmac.compare_digest(presented.encode(), expected.get_secret_value().encode()):
            raise errors.Unauthorized("a metrics bearer token is required")
    gauges = await request.app.state.outbox_gauges.read()
    body = metrics.REGISTRY.render(gauges).encode()
    return Response(body, media_type=CONTENT_TYPE, headers={"cache-control": "no-store"})
