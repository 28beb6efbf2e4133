"""``/admin/v1/tenants``: create, list, read, change and disable tenants."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from litestar import Request, Router, delete, get, patch, post
from litestar.params import FromPath
from msgspec import UnsetType

from broker import errors
from broker.http import admin
from broker.http.deps import RuntimeDep, SessionDep
from broker.http.errors import request_id_of
from broker.tenants import schemas, secrets, service

V = TypeVar("V")


@post("/tenants", status_code=201)
async def create_tenant(
    request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.TenantCreated:
    body = await admin.read_body(request, schemas.TenantCreate)
    spec = service.TenantSpec(
        name=body.name,
        kind=body.kind,
        allowed_scopes=_scopes(body.allowed_scopes),
        default_scopes=_scopes(body.default_scopes),
        access_token_ttl=body.access_token_ttl,
        refresh_token_ttl=body.refresh_token_ttl,
    )
    async with session.begin():
        tenant, secret = await service.create_tenant(
            session, runtime.ring, spec, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.tenant_created(tenant, secret)


@get("/tenants")
async def list_tenants(request: Request[Any, Any, Any], session: SessionDep) -> schemas.TenantPage:
    limit = admin.page_limit(request, service.DEFAULT_PAGE_SIZE, service.MAX_PAGE_SIZE)
    after = admin.query_param(request, "after")
    kind = admin.query_param(request, "kind")
    async with session.begin():
        page, next_after = await service.list_tenants(session, limit=limit, after=after, kind=kind)
    return schemas.TenantPage(data=[schemas.tenant_out(t) for t in page], next_after=next_after)


@get("/tenants/{client_id:str}")
async def get_tenant(client_id: FromPath[str], session: SessionDep) -> schemas.TenantOut:
    client_id = admin.path_param(client_id, "tenant")
    async with session.begin():
        tenant = await service.get_tenant(session, client_id)
    return schemas.tenant_out(tenant)


@patch("/tenants/{client_id:str}")
async def update_tenant(
    client_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> schemas.TenantOut:
    client_id = admin.path_param(client_id, "tenant")
    body = await admin.read_body(request, schemas.TenantUpdate)
    clear = frozenset(name for name in ("access_token_ttl", "refresh_token_ttl") if getattr(body, name) is None)
    spec = service.TenantSpec(
        name=_given(body.name),
        status=_given(body.status),
        allowed_scopes=_scopes(_given(body.allowed_scopes)),
        default_scopes=_scopes(_given(body.default_scopes)),
        access_token_ttl=_given(body.access_token_ttl),
        refresh_token_ttl=_given(body.refresh_token_ttl),
        clear=clear,
    )
    async with session.begin():
        tenant = await service.update_tenant(
            session, client_id, spec, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.tenant_out(tenant)


@post("/tenants/{client_id:str}/disable", status_code=200)
async def disable_tenant(
    client_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> schemas.TenantOut:
    client_id = admin.path_param(client_id, "tenant")
    async with session.begin():
        tenant = await service.disable_tenant(
            session, client_id, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.tenant_out(tenant)


@get("/tenants/{client_id:str}/secrets")
async def list_secrets(client_id: FromPath[str], session: SessionDep) -> schemas.SecretList:
    client_id = admin.path_param(client_id, "tenant")
    async with session.begin():
        found = await secrets.list_secrets(session, client_id)
    return schemas.SecretList(data=[schemas.secret_out(s) for s in found])


@post("/tenants/{client_id:str}/secrets", status_code=201)
async def rotate_secret(
    client_id: FromPath[str], request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.SecretCreated:
    client_id = admin.path_param(client_id, "tenant")
    raw = await request.body()
    body = await admin.read_body(request, schemas.SecretRotate) if raw.strip() else schemas.SecretRotate()
    async with session.begin():
        secret, value, others = await secrets.rotate_secret(
            session,
            runtime.ring,
            client_id,
            overlap_seconds=body.overlap_seconds,
            actor=admin.actor_of(request),
            request_id=request_id_of(request),
        )
    return schemas.secret_created(secret, value, others)


@post("/tenants/{client_id:str}/secrets/{secret_id:str}/revoke", status_code=200)
async def revoke_secret(
    client_id: FromPath[str], secret_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> schemas.SecretOut:
    return await _revoke_secret(client_id, secret_id, request, session)


@delete("/tenants/{client_id:str}/secrets/{secret_id:str}", status_code=200)
async def delete_secret(
    client_id: FromPath[str], secret_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> schemas.SecretOut:
    return await _revoke_secret(client_id, secret_id, request, session)


async def _revoke_secret(
    client_id: str, secret_id: str, request: Request[Any, Any, Any], session: SessionDep
) -> schemas.SecretOut:
    client_id = admin.path_param(client_id, "tenant")
    try:
        secret_uuid = uuid.UUID(admin.path_param(secret_id, "secret"))
    except ValueError:
        raise errors.NotFound("no secret with that id for this tenant") from None
    async with session.begin():
        secret = await secrets.revoke_secret(
            session, client_id, secret_uuid, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.secret_out(secret)


def _given(value: V | UnsetType) -> V | None:
    return None if isinstance(value, UnsetType) else value


def _scopes(value: list[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


router = Router(
    path=admin.PREFIX,
    guards=[admin.require_admin_key],
    route_handlers=[
        create_tenant,
        list_tenants,
        get_tenant,
        update_tenant,
        disable_tenant,
        list_secrets,
        rotate_secret,
        revoke_secret,
        delete_secret,
    ],
    tags=["admin: tenants"],
)
