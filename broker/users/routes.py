"""``POST /user/create``, ``/user/get``, ``/user/update``, ``/user/remove`` (Plaid's wire contract)."""

from __future__ import annotations

from typing import Any, cast

from litestar import Request, Response, Router, post

from broker.gateway import upstreams
from broker.gateway import users as gateway_users
from broker.http.auth import authenticate_client
from broker.http.deps import RuntimeDep, SessionDep
from broker.http.errors import request_id_of
from broker.http.params import plaid_json
from broker.tenants.clients import AuthenticatedClient
from broker.users import schemas, service


async def _gateway(
    request: Request[Any, Any, Any], runtime: RuntimeDep, tenant: AuthenticatedClient, path: str, body: dict[str, Any]
) -> Response[Any]:
    """Forward a user request of a gateway tenant (broker.gateway.users) and relay the upstream's answer."""
    upstream = await upstreams.load(runtime, tenant)
    data = await gateway_users.forward(runtime, tenant, upstream, path, body, request_id=request_id_of(request))
    return Response(content=data, status_code=200)


@post("/user/create", status_code=200)
async def user_create(
    request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.UserCreateResponse:
    body = await plaid_json(request)
    req = schemas.parse(body, schemas.UserCreateRequest)
    tenant = await authenticate_client(request, runtime, body)
    if tenant.upstream is not None:
        return cast("schemas.UserCreateResponse", await _gateway(request, runtime, tenant, "/user/create", body))
    request_id = request_id_of(request)
    created = await service.create_user(
        session,
        runtime.ring,
        tenant_id=tenant.id,
        client_user_id=req.client_user_id,
        token_env=runtime.settings.token_env,
        identity=req.identity,
        consumer_report_user_identity=req.consumer_report_user_identity,
        actor=tenant.client_id,
        request_id=request_id,
    )
    return schemas.UserCreateResponse(user_id=created.user_id, user_token=created.user_token, request_id=request_id)


@post("/user/get", status_code=200)
async def user_get(
    request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.UserGetResponse:
    body = await plaid_json(request)
    req = schemas.parse(body, schemas.UserGetRequest)
    tenant = await authenticate_client(request, runtime, body)
    if tenant.upstream is not None:
        return cast("schemas.UserGetResponse", await _gateway(request, runtime, tenant, "/user/get", body))
    user = await service.get_user(
        session, runtime.ring, tenant_id=tenant.id, user_id=req.user_id, user_token=req.user_token
    )
    return schemas.UserGetResponse(
        request_id=request_id_of(request),
        user_id=user.user_id,
        client_user_id=user.client_user_id,
        created_at=user.created_at,
        updated_at=user.updated_at,
        identity=user.identity,
        consumer_report_user_identity=user.consumer_report_user_identity,
    )


@post("/user/update", status_code=200)
async def user_update(
    request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.UserUpdateResponse:
    body = await plaid_json(request)
    req = schemas.parse(body, schemas.UserUpdateRequest)
    tenant = await authenticate_client(request, runtime, body)
    if tenant.upstream is not None:
        return cast("schemas.UserUpdateResponse", await _gateway(request, runtime, tenant, "/user/update", body))
    request_id = request_id_of(request)
    await service.update_user(
        session,
        runtime.ring,
        tenant_id=tenant.id,
        user_id=req.user_id,
        user_token=req.user_token,
        identity=req.identity,
        consumer_report_user_identity=req.consumer_report_user_identity,
        actor=tenant.client_id,
        request_id=request_id,
    )
    return schemas.UserUpdateResponse(request_id=request_id)


@post("/user/remove", status_code=200)
async def user_remove(
    request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.UserRemoveResponse:
    body = await plaid_json(request)
    req = schemas.parse(body, schemas.UserRemoveRequest)
    tenant = await authenticate_client(request, runtime, body)
    request_id = request_id_of(request)
    if tenant.upstream is not None:
        upstream = await upstreams.load(runtime, tenant)
        subject = gateway_users.subject_of(req.user_id, req.user_token)
        await gateway_users.remove(runtime, tenant, upstream, subject, request_id)
        return schemas.UserRemoveResponse(request_id=request_id)
    await service.remove_user(
        session,
        runtime.ring,
        tenant_id=tenant.id,
        user_id=req.user_id,
        user_token=req.user_token,
        actor=tenant.client_id,
        request_id=request_id,
    )
    return schemas.UserRemoveResponse(request_id=request_id)


router = Router(path="/", route_handlers=[user_create, user_get, user_update, user_remove], tags=["users"])
