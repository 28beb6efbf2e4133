"""Optional OpenTelemetry tracing (``BROKER_OTEL_ENABLED``): one server span per HTTP request.

This module imports ``opentelemetry`` (the ``[otel]`` extra) and is itself imported only when tracing
is enabled (``broker.app.create_app``), so a server without tracing pays nothing: no import, no
middleware, no span.

The span is named ``<METHOD> <route template>``, continues a W3C ``traceparent`` from the request,
and carries the method, route, status and broker's request id; never a header, a body or a raw path
(which may hold ids). Spans go to the OTLP/HTTP endpoint ``BROKER_OTEL_ENDPOINT`` (else the
``OTEL_EXPORTER_OTLP_*`` variables the SDK reads); a tracer provider installed by the embedding
process (a test's in-memory exporter, say) is used as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from broker.settings import Settings

SERVER_ERROR = 500


def install(settings: Settings) -> None:
    """Install a tracer provider exporting over OTLP/HTTP, unless the process already has one."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

    provider = TracerProvider(resource=Resource.create({"service.name": settings.otel_service_name}))
    exporter = OTLPSpanExporter(endpoint=settings.otel_endpoint) if settings.otel_endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def _carrier(scope: Scope) -> dict[str, str]:
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope.get("headers", [])
        if name in (b"traceparent", b"tracestate")
    }


class TracingMiddleware:
    """ASGI middleware: a server span around each HTTP request (outermost, so it times everything)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.tracer = trace.get_tracer("broker")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":  # type: ignore[comparison-overlap]
            await self.app(scope, receive, send)
            return
        parent = propagate.extract(_carrier(scope))
        method = str(scope.get("method", ""))
        with self.tracer.start_as_current_span(
            f"{method} request", context=parent, kind=SpanKind.SERVER, attributes={"http.request.method": method}
        ) as span:
            status = SERVER_ERROR

            async def send_traced(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                state: dict[str, Any] = scope.get("state", {})
                route = scope.get("path_template") or "unmatched"
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if state.get("request_id"):
                    span.set_attribute("broker.request_id", state["request_id"])
                if status >= SERVER_ERROR:
                    span.set_status(Status(StatusCode.ERROR))
