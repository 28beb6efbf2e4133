"""``/admin/v1/audiences`` and ``/admin/v1/tenants/{client_id}/policies``.

URNs contain ``:``; they travel as one path segment (``{urn:str}``), which is why audience URNs may not
contain ``/``.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, delete, get, patch, post, put
from litestar.params import FromPath

from broker.audiences import policies, schemas, service
from broker.http import admin
from broker.http.deps import SessionDep
from broker.http.errors import request_id_of


@get("/audiences")
async def list_audiences(session: SessionDep) -> schemas.AudienceList:
    async with session.begin():
        views = await service.list_audiences(session)
    return schemas.AudienceList(data=[schemas.audience_out(v) for v in views])


@post("/audiences", status_code=201)
async def create_audience(request: Request[Any, Any, Any], session: SessionDep) -> schemas.AudienceOut:
    body = await admin.read_body(request, schemas.AudienceCreate)
    async with session.begin():
        view = await service.create_audience(
            session, body.urn, body.display_name, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.audience_out(view)


@get("/audiences/{urn:str}")
async def get_audience(urn: FromPath[str], session: SessionDep) -> schemas.AudienceOut:
    urn = admin.path_param(urn, "audience")
    async with session.begin():
        view = await service.get_audience(session, urn)
    return schemas.audience_out(view)


@patch("/audiences/{urn:str}")
async def update_audience(
    urn: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> schemas.AudienceOut:
    urn = admin.path_param(urn, "audience")
    body = await admin.read_body(request, schemas.AudienceUpdate)
    async with session.begin():
        view = await service.rename_audience(
            session, urn, body.display_name, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.audience_out(view)


@put("/audiences/{urn:str}/members/{client_id:str}")
async def add_member(
    urn: FromPath[str], client_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> schemas.AudienceOut:
    urn = admin.path_param(urn, "audience")
    client_id = admin.path_param(client_id, "tenant")
    async with session.begin():
        view = await service.add_member(
            session, urn, client_id, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.audience_out(view)


@delete("/audiences/{urn:str}/members/{client_id:str}", status_code=200)
async def remove_member(
    urn: FromPath[str], client_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> schemas.AudienceOut:
    urn = admin.path_param(urn, "audience")
    client_id = admin.path_param(client_id, "tenant")
    async with session.begin():
        view = await service.remove_member(
            session, urn, client_id, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.audience_out(view)


@put("/tenants/{client_id:str}/policies")
async def put_policy(
    client_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> Response[schemas.PolicyOut]:
    client_id = admin.path_param(client_id, "tenant")
    body = await admin.read_body(request, schemas.PolicyIn)
    spec = policies.PolicySpec(
        target=body.target,
        allowed_scopes=tuple(body.allowed_scopes) if body.allowed_scopes is not None else None,
        access_token_ttl=body.access_token_ttl,
        refresh_token_ttl=body.refresh_token_ttl,
        webhook_include_refresh_token=body.webhook_include_refresh_token,
    )
    async with session.begin():
        view, created = await policies.upsert_policy(
            session, client_id, spec, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return Response(schemas.policy_out(view), status_code=201 if created else 200)


@get("/tenants/{client_id:str}/policies")
async def list_policies(client_id: FromPath[str], session: SessionDep) -> schemas.PolicyList:
    client_id = admin.path_param(client_id, "tenant")
    async with session.begin():
        views = await policies.list_policies(session, client_id)
    return schemas.PolicyList(data=[schemas.policy_out(v) for v in views])


@delete("/tenants/{client_id:str}/policies/{target:str}")
async def delete_policy(
    client_id: FromPath[str], target: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> None:
    client_id = admin.path_param(client_id, "tenant")
    target = admin.path_param(target, "policy target")
    async with session.begin():
        await policies.delete_policy(
            session, client_id, target, actor=admin.actor_of(request), request_id=request_id_of(request)
        )


router = Router(
    path=admin.PREFIX,
    guards=[admin.require_admin_key],
    route_handlers=[
        list_audiences,
        create_audience,
        get_audience,
        update_audience,
        add_member,
        remove_member,
        put_policy,
        list_policies,
        delete_policy,
    ],
    tags=["admin: audiences and policies"],
)
