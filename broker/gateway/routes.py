"""``/admin/v1/tenants/{client_id}/upstream``: give a tenant an upstream (gateway mode), show it, remove it."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, delete, get, put
from litestar.params import FromPath

from broker.gateway import schemas, upstreams
from broker.http import admin
from broker.http.deps import RuntimeDep, SessionDep
from broker.http.errors import request_id_of


@put("/tenants/{client_id:str}/upstream", status_code=200)
async def set_upstream(
    client_id: FromPath[str], request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.UpstreamOut:
    client_id = admin.path_param(client_id, "tenant")
    body = await admin.read_body(request, schemas.UpstreamSet)
    spec = upstreams.UpstreamSpec(base_url=body.base_url, client_id=body.client_id, secret=body.secret, mode=body.mode)
    async with session.begin():
        view = await upstreams.set_upstream(
            session,
            runtime.ring,
            runtime.settings,
            client_id,
            spec,
            actor=admin.actor_of(request),
            request_id=request_id_of(request),
        )
    return schemas.upstream_out(view)


@get("/tenants/{client_id:str}/upstream")
async def get_upstream(client_id: FromPath[str], runtime: RuntimeDep, session: SessionDep) -> schemas.UpstreamOut:
    client_id = admin.path_param(client_id, "tenant")
    async with session.begin():
        view = await upstreams.get_upstream(session, runtime.ring, client_id)
    return schemas.upstream_out(view)


@delete("/tenants/{client_id:str}/upstream", status_code=204)
async def delete_upstream(client_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep) -> None:
    client_id = admin.path_param(client_id, "tenant")
    async with session.begin():
        await upstreams.delete_upstream(
            session, client_id, actor=admin.actor_of(request), request_id=request_id_of(request)
        )


router = Router(
    path=admin.PREFIX,
    guards=[admin.require_admin_key],
    route_handlers=[set_upstream, get_upstream, delete_upstream],
    tags=["admin: gateway"],
)
