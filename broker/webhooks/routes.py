"""``/admin/v1/webhook-endpoints`` and ``/admin/v1/webhook-deliveries``."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, delete, get, patch, post
from litestar.params import FromPath
from msgspec import UnsetType

from broker.http import admin
from broker.http.deps import RuntimeDep, SessionDep
from broker.http.errors import request_id_of
from broker.webhooks import schemas, service


@post("/webhook-endpoints", status_code=201)
async def create_endpoint(
    request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.EndpointWithSecret:
    body = await admin.read_body(request, schemas.EndpointCreate)
    spec = service.EndpointSpec(
        url=body.url,
        events=tuple(body.events) if body.events is not None else None,
        enabled=body.enabled,
        description=body.description,
    )
    async with session.begin():
        view, secret = await service.create_endpoint(
            session,
            runtime.ring,
            runtime.settings,
            spec,
            client_id=body.client_id,
            audience=body.audience,
            actor=admin.actor_of(request),
            request_id=request_id_of(request),
        )
    return schemas.endpoint_with_secret(view, secret)


@get("/webhook-endpoints")
async def list_endpoints(request: Request[Any, Any, Any], session: SessionDep) -> schemas.EndpointList:
    client_id = admin.query_param(request, "client_id")
    audience = admin.query_param(request, "audience")
    async with session.begin():
        views = await service.list_endpoints(session, client_id=client_id, audience=audience)
    return schemas.EndpointList(data=[schemas.endpoint_out(v) for v in views])


@get("/webhook-endpoints/{endpoint_id:str}")
async def get_endpoint(endpoint_id: FromPath[str], session: SessionDep) -> schemas.EndpointOut:
    endpoint_id = admin.path_param(endpoint_id, "webhook endpoint")
    async with session.begin():
        view = await service.get_endpoint(session, endpoint_id)
    return schemas.endpoint_out(view)


@patch("/webhook-endpoints/{endpoint_id:str}")
async def update_endpoint(
    endpoint_id: FromPath[str], request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.EndpointOut:
    endpoint_id = admin.path_param(endpoint_id, "webhook endpoint")
    body = await admin.read_body(request, schemas.EndpointUpdate)
    description = None if isinstance(body.description, UnsetType) else body.description
    spec = service.EndpointSpec(
        url=None if isinstance(body.url, UnsetType) else body.url,
        events=None if isinstance(body.events, UnsetType) else tuple(body.events),
        enabled=None if isinstance(body.enabled, UnsetType) else body.enabled,
        description=description,
        clear_description=body.description is None,
    )
    async with session.begin():
        view = await service.update_endpoint(
            session,
            runtime.settings,
            endpoint_id,
            spec,
            actor=admin.actor_of(request),
            request_id=request_id_of(request),
        )
    return schemas.endpoint_out(view)


@delete("/webhook-endpoints/{endpoint_id:str}")
async def delete_endpoint(endpoint_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep) -> None:
    endpoint_id = admin.path_param(endpoint_id, "webhook endpoint")
    async with session.begin():
        await service.delete_endpoint(
            session, endpoint_id, actor=admin.actor_of(request), request_id=request_id_of(request)
        )


@post("/webhook-endpoints/{endpoint_id:str}/rotate-secret", status_code=200)
async def rotate_secret(
    endpoint_id: FromPath[str], request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.EndpointWithSecret:
    endpoint_id = admin.path_param(endpoint_id, "webhook endpoint")
    raw = await request.body()
    body = await admin.read_body(request, schemas.SecretRotation) if raw.strip() else schemas.SecretRotation()
    async with session.begin():
        view, secret = await service.rotate_secret(
            session,
            runtime.ring,
            endpoint_id,
            overlap_seconds=body.overlap_seconds,
            actor=admin.actor_of(request),
            request_id=request_id_of(request),
        )
    return schemas.endpoint_with_secret(view, secret)


@post("/webhook-endpoints/{endpoint_id:str}/test", status_code=202)
async def send_test(
    endpoint_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> schemas.DeliveryOut:
    endpoint_id = admin.path_param(endpoint_id, "webhook endpoint")
    async with session.begin():
        view = await service.send_test(
            session, endpoint_id, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.delivery_view_out(view)


@get("/webhook-deliveries")
async def list_deliveries(request: Request[Any, Any, Any], session: SessionDep) -> schemas.DeliveryPage:
    limit = admin.page_limit(request, service.DEFAULT_PAGE_SIZE, service.MAX_PAGE_SIZE)
    async with session.begin():
        page, next_after = await service.list_deliveries(
            session,
            limit=limit,
            status=admin.query_param(request, "status"),
            endpoint_id=admin.query_param(request, "endpoint_id"),
            event_type=admin.query_param(request, "event_type"),
            event_id=admin.query_param(request, "event_id"),
            after=admin.query_param(request, "after"),
        )
    return schemas.DeliveryPage(data=[schemas.delivery_out(d) for d in page], next_after=next_after)


@get("/webhook-deliveries/{delivery_id:str}")
async def get_delivery(delivery_id: FromPath[str], session: SessionDep) -> schemas.DeliveryOut:
    delivery_id = admin.path_param(delivery_id, "webhook delivery")
    async with session.begin():
        view = await service.get_delivery(session, delivery_id)
    return schemas.delivery_view_out(view)


@post("/webhook-deliveries/{delivery_id:str}/redeliver", status_code=202)
async def redeliver(
    delivery_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> schemas.DeliveryOut:
    delivery_id = admin.path_param(delivery_id, "webhook delivery")
    async with session.begin():
        view = await service.redeliver(
            session, delivery_id, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.delivery_view_out(view)


@post("/webhook-deliveries/redeliver-dead", status_code=202)
async def redeliver_dead(request: Request[Any, Any, Any], session: SessionDep) -> schemas.RedeliveredCount:
    raw = await request.body()
    body = await admin.read_body(request, schemas.RedeliverDead) if raw.strip() else schemas.RedeliverDead()
    async with session.begin():
        count = await service.redeliver_dead(
            session, endpoint_id=body.endpoint_id, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.RedeliveredCount(redelivered=count)


router = Router(
    path=admin.PREFIX,
    guards=[admin.require_admin_key],
    route_handlers=[
        create_endpoint,
        list_endpoints,
        get_endpoint,
        update_endpoint,
        delete_endpoint,
        rotate_secret,
        send_test,
        list_deliveries,
        get_delivery,
        redeliver,
        redeliver_dead,
    ],
    tags=["admin: webhooks"],
)
