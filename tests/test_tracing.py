"""Optional OpenTelemetry tracing: off costs nothing (no import, no middleware); on, one server span
per request named by its route template, continuing the caller's trace, with broker's request id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from litestar.testing import AsyncTestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.app import create_app

OFF = """
import json, sys
from broker.app import create_app
app = create_app()
print(json.dumps({
    "modules": sorted(
        m for m in sys.modules
        if m.startswith(("opentelemetry.sdk", "opentelemetry.trace", "opentelemetry.exporter"))
        or m == "broker.observability.tracing"
    ),
    "middleware": [getattr(m, "__name__", repr(m)) for m in app.middleware],
}))
"""


def test_tracing_off_imports_nothing_and_adds_no_middleware():
    # Litestar itself probes for the top-level ``opentelemetry`` package when it builds any app (to
    # order its own optional middleware); neither the API's tracer nor the SDK nor an exporter is loaded.
    env = {**os.environ, "BROKER_OTEL_ENABLED": "false"}
    done = subprocess.run([sys.executable, "-c", OFF], env=env, capture_output=True, text=True, timeout=60, check=True)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"modules": [], "middleware": ["RequestContextMiddleware"]}


async def test_tracing_on_makes_one_server_span_per_request(settings, make_tenant):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    lender = await make_tenant("traced lender")
    app = create_app(settings.model_copy(update={"otel_enabled": True}))
    assert [m.__name__ for m in app.middleware] == ["TracingMiddleware", "RequestContextMiddleware"]  # type: ignore[union-attr]
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with AsyncTestClient(app=app, base_url="http://broker.test") as client:
        issued = await client.post(
            "/oauth/token",
            json={"grant_type": "client_credentials"},
            headers={**lender.headers, "traceparent": f"00-{parent_trace}-00f067aa0ba902b7-01"},
        )
        assert issued.status_code == 200
        missing = await client.get(f"/admin/v1/tenants/{lender.client_id}")
        assert missing.status_code == 401
    spans = {span.name: span for span in exporter.get_finished_spans()}
    token = spans["POST /oauth/token"]
    assert token.kind == trace.SpanKind.SERVER
    assert format(token.context.trace_id, "032x") == parent_trace
    assert token.attributes is not None
    assert token.attributes["http.route"] == "/oauth/token"
    assert token.attributes["http.response.status_code"] == 200
    assert token.attributes["broker.request_id"] == issued.headers["x-request-id"]
    admin = spans["GET /admin/v1/tenants/{client_id}"]
    assert admin.attributes is not None
    assert admin.attributes["http.response.status_code"] == 401
    assert lender.client_id not in json.dumps({name: dict(s.attributes or {}) for name, s in spans.items()})
    provider.shutdown()
