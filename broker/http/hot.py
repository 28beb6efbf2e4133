"""``POST /oauth/token`` and ``POST /oauth/introspect`` without Litestar's router and response objects.

These two endpoints are most of broker's traffic. Around their handlers Litestar matches the route,
runs its exception middleware and the handler's signature model, and builds a ``Response`` and then an
``ASGIResponse``: about 5% of such a request's CPU (measured in-process: 0.426 ms per
``client_credentials`` request through Litestar, 0.405 ms here; docs/performance.md, "Fourth round").
``BrokerApp`` answers these two (path, method) pairs itself and hands every other request, and the
lifespan, to Litestar unchanged.

Nothing about the answer changes. The request is Litestar's own ``Request`` (same body limit, since it
carries the registered route handler; same header parsing); the handler bodies are the ones the Litestar
routes call (``oauth.routes.issue_tokens`` and ``introspect_token``); an exception is rendered by the one
error renderer (``http.errors.handle_exception``); and the same middleware stack wraps the call (request
id, ``X-Request-Id``, access log and metrics, and the tracing span when tracing is on). The whole test
suite goes through this path, and ``tests/test_hot_path.py`` compares it with Litestar's byte for byte.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Litestar, Request

from broker.http import errors as http_errors

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from litestar.handlers import HTTPRouteHandler
    from litestar.types import ASGIApp, Receive, Scope, Send

    Produce = Callable[[Request[Any, Any, Any]], Awaitable[msgspec.Struct]]

_HEADERS = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"), (b"content-type", b"application/json"))
_encode = msgspec.json.Encoder().encode


class _Endpoint:
    """One hot endpoint as a plain ASGI app: parse with Litestar's ``Request``, answer 200 with JSON."""

    def __init__(self, route_handler: HTTPRouteHandler, produce: Produce) -> None:
        self.route_handler = route_handler
        self.produce = produce

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route_handler"] = self.route_handler  # Request.stream reads the body limit from it
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        try:
            payload = _encode(await self.produce(request))
        except Exception as exc:  # noqa: BLE001 - rendered exactly as Litestar's exception handler renders it
            response = http_errors.handle_exception(request, exc)
            await response.to_asgi_response(None, request)(scope, receive, send)
            return
        headers = [*_HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})


class BrokerApp(Litestar):
    """Litestar, serving the hot endpoints registered with ``serve_hot`` without its router."""

    _hot: Mapping[str, ASGIApp] = MappingProxyType({})

    def serve_hot(self, produce: Mapping[str, Produce], middleware: Sequence[Callable[[ASGIApp], ASGIApp]]) -> None:
        """Serve ``POST`` on each path of ``produce`` directly, wrapped in ``middleware`` (outermost first).

        Each path must be a registered ``POST`` route: its handler supplies the request body limit, and
        keeps documenting the endpoint in the OpenAPI schema.
        """
        routes = self.route_handler_method_map
        hot: dict[str, ASGIApp] = {}
        for path, body in produce.items():
            app: ASGIApp = _Endpoint(routes[path]["POST"], body)  # type: ignore[arg-type]
            for layer in reversed(middleware):
                app = layer(app)
            hot[path] = app
        self._hot = MappingProxyType(hot)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401 - Litestar's own signature
        """Serve a hot endpoint; pass anything else (other routes, other methods, the lifespan) to Litestar."""
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._hot.get(scope["path"])
            if endpoint is not None:
                scope["app"] = scope["litestar_app"] = self
                scope.setdefault("state", {})
                scope["path_template"] = scope["path"]  # the metrics label Litestar's router would set
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
