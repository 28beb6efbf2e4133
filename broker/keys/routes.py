"""``/admin/v1/keys`` (usage of the key ring) and ``/admin/v1/tenants/{client_id}/shred``."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, get, post
from litestar.params import FromPath

from broker import errors
from broker.http import admin
from broker.http.deps import RuntimeDep, SessionDep
from broker.http.errors import request_id_of
from broker.keys import schemas, service


@get("/keys")
async def key_status(runtime: RuntimeDep, session: SessionDep) -> schemas.KeyStatusOut:
    async with session.begin():
        report = await service.status(session, runtime.ring)
    columns = {
        name: schemas.ColumnUsageOut(direct=u.direct, via_data_keys=u.via_data_keys, other=u.other)
        for name, u in report.columns.items()
    }
    return schemas.KeyStatusOut(
        active=report.active,
        ring=report.ring,
        data_keys=report.data_keys,
        columns=columns,
        rows_by_key=report.rows_by_key(),
        pending=report.pending(),
    )


@get("/keys/{kid:str}")
async def key_use(kid: FromPath[str], runtime: RuntimeDep, session: SessionDep) -> schemas.KeyUseOut:
    kid = admin.path_param(kid, "key")
    async with session.begin():
        use = await service.key_use(session, kid)
    return schemas.KeyUseOut(
        kid=kid,
        active=kid == runtime.ring.active_kid,
        in_ring=kid in runtime.ring.keys,
        data_keys=use.data_keys,
        rows=use.rows,
        retirable=not use.in_use and kid != runtime.ring.active_kid,
    )


@post("/tenants/{client_id:str}/shred", status_code=200)
async def shred_tenant(
    client_id: FromPath[str], request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep
) -> schemas.ShredOut:
    client_id = admin.path_param(client_id, "tenant")
    body = await admin.read_body(request, schemas.ShredRequest)
    if body.confirm != client_id:
        raise errors.ValidationFailed("confirm must repeat the tenant's client_id: shredding cannot be undone")
    result = await service.shred_tenant(
        session, runtime.ring, client_id, actor=admin.actor_of(request), request_id=request_id_of(request)
    )
    return schemas.ShredOut(
        client_id=result.client_id,
        data_keys=result.data_keys,
        grants_revoked=result.grants_revoked,
        users_removed=result.users_removed,
        rows_overwritten=result.rows_overwritten,
    )


router = Router(
    path=admin.PREFIX,
    guards=[admin.require_admin_key],
    route_handlers=[key_status, key_use, shred_tenant],
    tags=["admin: keys"],
)
