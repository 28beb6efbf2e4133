"""``/admin/v1/admin-keys``: issue, list and revoke admin API keys."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request, Router, get, post
from litestar.params import FromPath

from broker import errors
from broker.admin_keys import schemas, service
from broker.http import admin
from broker.http.deps import RuntimeDep, SessionDep
from broker.http.errors import request_id_of


@post("/admin-keys", status_code=201)
async def create_key(
    request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.AdminKeyCreated:
    body = await admin.read_body(request, schemas.AdminKeyCreate)
    async with session.begin():
        key, value = await service.create_key(
            session,
            runtime.ring,
            name=body.name,
            scope=body.scope,
            actor=admin.actor_of(request),
            request_id=request_id_of(request),
        )
    return schemas.key_created(key, value)


@get("/admin-keys")
async def list_keys(session: SessionDep) -> schemas.AdminKeyList:
    async with session.begin():
        keys = await service.list_keys(session)
    return schemas.AdminKeyList(data=[schemas.key_out(k) for k in keys])


@post("/admin-keys/{key_id:str}/revoke", status_code=200)
async def revoke_key(
    key_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> schemas.AdminKeyOut:
    async with session.begin():
        key = await service.revoke_key(
            session, _key_id(key_id), actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.key_out(key)


def _key_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(admin.path_param(raw, "admin key"))
    except ValueError:
        raise errors.NotFound("no admin key with that id") from None


router = Router(
    path=admin.PREFIX,
    guards=[admin.require_admin_key],
    route_handlers=[create_key, list_keys, revoke_key],
    tags=["admin: keys"],
)
