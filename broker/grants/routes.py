"""``/admin/v1/grants``, ``/admin/v1/users/{user_id}/grants``, ``/admin/v1/tenants/{client_id}/grants``."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request, Router, delete, get, post
from litestar.params import FromPath

from broker import errors
from broker.grants import schemas, service
from broker.http import admin
from broker.http.deps import RuntimeDep, SessionDep
from broker.http.errors import request_id_of


@get("/users/{user_id:str}/grants")
async def user_grants(user_id: FromPath[str], session: SessionDep) -> schemas.UserGrantsOut:
    user_id = admin.path_param(user_id, "user")
    async with session.begin():
        found = await service.user_grants(session, user_id)
    return schemas.UserGrantsOut(
        user_id=found.user_id,
        client_user_id=found.client_user_id,
        tenant=found.tenant,
        removed_at=found.removed_at,
        grants=[schemas.grant_out(g) for g in found.grants],
    )


@get("/tenants/{client_id:str}/grants")
async def tenant_grants(
    client_id: FromPath[str], request: Request[Any, Any, Any], session: SessionDep
) -> schemas.GrantPage:
    client_id = admin.path_param(client_id, "tenant")
    limit = admin.page_limit(request, service.DEFAULT_PAGE_SIZE, service.MAX_PAGE_SIZE)
    live = _flag(admin.query_param(request, "live"), "live")
    async with session.begin():
        trees, next_after = await service.tenant_grants(
            session, client_id, limit=limit, after=admin.query_param(request, "after"), live=live
        )
    return schemas.GrantPage(data=[schemas.grant_out(t) for t in trees], next_after=next_after)


@get("/grants/{grant_id:str}")
async def get_grant(grant_id: FromPath[str], session: SessionDep) -> schemas.GrantOut:
    async with session.begin():
        tree = await service.grant_tree(session, _grant_id(grant_id))
    return schemas.grant_out(tree)


@post("/grants/{grant_id:str}/revoke", status_code=200)
async def revoke_grant(
    grant_id: FromPath[str], request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.RevokedOut:
    target = _grant_id(grant_id)
    async with session.begin():
        revoked = await service.revoke_grant(
            session, runtime.ring, target, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.RevokedOut(grant_id=target, revoked_count=len(revoked), revoked_grants=revoked)


@delete("/grants/{grant_id:str}/parties/{client_id:str}", status_code=200)
async def remove_party(
    grant_id: FromPath[str],
    client_id: FromPath[str],
    request: Request[Any, Any, Any],
    runtime: RuntimeDep,
    session: SessionDep,
) -> schemas.RevokedOut:
    target = _grant_id(grant_id)
    client_id = admin.path_param(client_id, "party")
    async with session.begin():
        revoked = await service.remove_party(
            session, runtime.ring, target, client_id, actor=admin.actor_of(request), request_id=request_id_of(request)
        )
    return schemas.RevokedOut(grant_id=target, revoked_count=len(revoked), revoked_grants=revoked)


def _grant_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(admin.path_param(raw, "grant"))
    except ValueError:
        raise errors.NotFound("no grant with that id") from None


def _flag(raw: str | None, name: str) -> bool | None:
    if raw is None:
        return None
    if raw not in {"true", "false"}:
        raise errors.ValidationFailed(f"{name} must be true or false")
    return raw == "true"


router = Router(
    path=admin.PREFIX,
    guards=[admin.require_admin_key],
    route_handlers=[user_grants, tenant_grants, get_grant, revoke_grant, remove_party],
    tags=["admin: grants"],
)
