"""``POST /user/create``, ``/user/get``, ``/user/update``, ``/user/remove`` (Plaid's wire contract)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, post

from broker.http.auth import authenticate_client
from broker.http.deps import RuntimeDep, SessionDep
from broker.http.errors import request_id_of
from broker.http.params import plaid_json
from broker.users import schemas, service


@post("/user/create", status_code=200)
async def user_create(
    request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.UserCreateResponse:
    body = await plaid_json(request)
    req = schemas.parse(body, schemas.UserCreateRequest)
    tenant = await authenticate_client(request, runtime, body)
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
