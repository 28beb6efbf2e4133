"""The composition root: ``create_app(settings)`` wires every slice into one Litestar application."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable  # noqa: TC003 - Litestar resolves dependency annotations at runtime
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request  # noqa: TC002 - Request is resolved at runtime by Litestar
from litestar.datastructures import State  # noqa: TC002 - resolved at runtime by Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, ControllerRouterHandler  # noqa: TC002 - used in runtime annotations
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: TC002 - resolved at runtime by Litestar

from broker import __version__
from broker.admin_keys import routes as admin_keys_routes
from broker.audiences import routes as audiences_routes
from broker.audit import chain as audit_chain
from broker.audit import routes as audit_routes
from broker.context import Runtime
from broker.crypto.keyring import KeyRing
from broker.db.engine import create_engine, create_sessionmaker
from broker.gateway import calls as upstream_calls
from broker.gateway import routes as gateway_routes
from broker.grants import routes as grants_routes
from broker.http import errors as http_errors
from broker.http import health, openapi, ratelimit
from broker.http import logging as http_logging
from broker.http import metrics as http_metrics
from broker.http.admin import PREFIX, READ_METHODS
from broker.http.hot import BrokerApp
from broker.keys import routes as keys_routes
from broker.keys import service as keys_service
from broker.oauth import routes as oauth_routes
from broker.observability import collect, metrics
from broker.settings import Settings
from broker.tenants import routes as tenants_routes
from broker.users import routes as users_routes
from broker.webhooks import delivery as webhook_delivery
from broker.webhooks import routes as webhooks_routes


def build_runtime(settings: Settings) -> Runtime:
    """Load the key ring and build the engines (the primary's, and the replica's if any). Fails fast on a bad ring."""
    ring = KeyRing.from_settings(settings)
    engine = create_engine(settings)
    read_engine = create_engine(settings, settings.database_read_url) if settings.database_read_url else None
    return Runtime(
        settings=settings,
        ring=ring,
        engine=engine,
        sessions=create_sessionmaker(engine),
        read_engine=read_engine,
        read_sessions=create_sessionmaker(read_engine) if read_engine is not None else None,
    )


def freeze_startup_objects() -> None:
    """Move every object alive after start-up out of the garbage collector's reach.

    A worker holds a few hundred thousand long-lived objects (modules, Litestar's routes and OpenAPI
    schema, SQLAlchemy's mappers). A full collection walks all of them: about 65 ms on our 2-core
    machines, during which every in-flight request of that worker waits, which is most of the p99 of
    the hot paths. Frozen objects are never collected or walked again (``gc.freeze``, as Instagram
    does for forked workers); what requests allocate is still collected as before.
    """
    gc.collect()
    gc.freeze()


def _provide_runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


async def _provide_session(state: State, request: Request[Any, Any, Any]) -> AsyncIterator[AsyncSession]:
    """A session on the primary; admin reads (GET, HEAD) go to the read replica when one is configured."""
    runtime: Runtime = state.runtime
    sessions = runtime.sessions
    if runtime.read_sessions is not None and request.method in READ_METHODS and request.url.path.startswith(PREFIX):
        sessions = runtime.read_sessions
    async with sessions() as session:
        yield session


def _middleware(settings: Settings) -> list[Callable[[ASGIApp], ASGIApp]]:
    """Request context (request id, access log, metrics), wrapped in a tracing span when tracing is on."""
    stack: list[Callable[[ASGIApp], ASGIApp]] = [http_logging.RequestContextMiddleware]
    if settings.otel_enabled:  # imported only when enabled: no cost when off
        from broker.observability import tracing  # noqa: PLC0415

        tracing.install(settings)
        stack.insert(0, tracing.TracingMiddleware)
    return stack


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the ASGI application. Nothing registers itself at import time."""
    settings = settings or Settings()
    http_logging.configure(settings)
    metrics.use_directory(settings.metrics_dir)
    runtime = build_runtime(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.runtime = runtime
        app.state.outbox_gauges = collect.OutboxGauges(runtime.engine)
        sampler = collect.pool_sampler(runtime)
        metrics.REGISTRY.samplers.append(sampler)
        try:
            await keys_service.check_ring_on_start(runtime)  # refuse a ring that lacks a key in use
            freeze_startup_objects()
            # On shutdown (SIGTERM to granian: in-flight requests finish first) the blocks end in
            # reverse: the webhook worker lets its in-flight deliveries finish and records them.
            async with (
                metrics.flushing(),
                webhook_delivery.running(runtime),
                audit_chain.sealing(runtime),
                upstream_calls.running(runtime),
            ):
                yield
        finally:
            metrics.REGISTRY.samplers.remove(sampler)
            await ratelimit.close(app.state)
            await runtime.close()

    handlers: list[ControllerRouterHandler] = [health.healthz, health.readyz]
    if settings.metrics_enabled:
        handlers.append(http_metrics.exposition)
    middleware = _middleware(settings)
    app = BrokerApp(
        route_handlers=[
            *handlers,
            oauth_routes.router,
            oauth_routes.metadata,
            users_routes.router,
            tenants_routes.router,
            gateway_routes.router,
            audiences_routes.router,
            admin_keys_routes.router,
            webhooks_routes.router,
            keys_routes.router,
            audit_routes.router,
            grants_routes.router,
        ],
        dependencies={
            "runtime": Provide(_provide_runtime, sync_to_thread=False),
            "session": Provide(_provide_session),
        },
        exception_handlers=http_errors.HANDLERS,
        middleware=middleware,
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="broker",
            version=__version__,
            description="Plaid-compatible multi-party token exchange broker",
            path="/schema",
            render_plugins=openapi.render_plugins(),
        ),
        debug=False,
    )
    # The two hottest endpoints skip Litestar's router (broker.http.hot): same handlers, errors and middleware.
    app.serve_hot(
        {"/oauth/token": oauth_routes.issue_tokens, "/oauth/introspect": oauth_routes.introspect_token}, middleware
    )
    return app
