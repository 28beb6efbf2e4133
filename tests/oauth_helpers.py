"""Helpers for OAuth tests: a lender world with users, partners and policies."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, select

from broker.db.models import Audience, AudienceMember, AudiencePolicy

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
USER = "urn:plaid:params:tokens:user"
OAUTH_USER = "urn:plaid:params:oauth:user-token"
MULTI = "urn:plaid:params:credit:multi-user"
EXPERIAN = "urn:plaid:params:cra-partner:experian"
FANNIE = "urn:plaid:params:cra-partner:fannie-mae"
FREDDIE = "urn:plaid:params:cra-partner:freddie-mac"


async def post_token(client, creds, **params: Any):
    return await client.post("/oauth/token", json=params, headers=creds.headers)


async def token_ok(client, creds, **params: Any) -> dict[str, Any]:
    response = await post_token(client, creds, **params)
    assert response.status_code == 200, response.text
    return response.json()


async def introspect(client, creds, token: str) -> dict[str, Any]:
    response = await client.post("/oauth/introspect", json={"token": token}, headers=creds.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def revoke(client, creds, token: str) -> None:
    response = await client.post("/oauth/revoke", json={"token": token}, headers=creds.headers)
    assert response.status_code == 200, response.text


async def create_user(client, creds, client_user_id: str | None = None) -> dict[str, Any]:
    body = {"client_user_id": client_user_id or f"cu-{secrets.token_hex(6)}"}
    response = await client.post("/user/create", json=body, headers=creds.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def new_audience(sessions, urn: str | None = None) -> str:
    """A fresh audience URN, so tests never share members of a seeded CRA audience."""
    urn = urn or f"urn:test:cra-partner:{secrets.token_hex(6)}"
    async with sessions() as session, session.begin():
        exists = await session.scalar(select(Audience.id).where(Audience.urn == urn))
        if exists is None:
            await session.execute(insert(Audience).values(id=uuid.uuid4(), urn=urn, display_name=urn))
    return urn


async def add_member(sessions, urn: str, tenant_id: uuid.UUID) -> None:
    async with sessions() as session, session.begin():
        audience_id = await session.scalar(select(Audience.id).where(Audience.urn == urn))
        await session.execute(insert(AudienceMember).values(audience_id=audience_id, tenant_id=tenant_id))


async def allow(
    sessions,
    tenant_id: uuid.UUID,
    *,
    urn: str | None = None,
    target_tenant_id: uuid.UUID | None = None,
    allowed_scopes: list[str] | None = None,
    access_token_ttl: int | None = None,
    refresh_token_ttl: int | None = None,
) -> None:
    async with sessions() as session, session.begin():
        audience_id = None
        if urn is not None:
            audience_id = await session.scalar(select(Audience.id).where(Audience.urn == urn))
        await session.execute(
            insert(AudiencePolicy).values(
                id=uuid.uuid4(),
                tenant_id=tenant_id,
                audience_id=audience_id,
                target_tenant_id=target_tenant_id,
                allowed_scopes=allowed_scopes,
                access_token_ttl=access_token_ttl,
                refresh_token_ttl=refresh_token_ttl,
            )
        )


@dataclass
class World:
    """A lender, a second client, partners behind two fresh audience URNs, and a user."""

    lender: Any
    other: Any
    partner_a: Any
    partner_b: Any
    outsider: Any
    urn_a: str
    urn_b: str
    user: dict[str, Any] = field(default_factory=dict)


async def build_world(client, sessions, make_tenant) -> World:
    lender = await make_tenant("lender")
    other = await make_tenant("second client")
    partner_a = await make_tenant("partner a", kind="partner")
    partner_b = await make_tenant("partner b", kind="partner")
    outsider = await make_tenant("outsider")
    urn_a, urn_b = await new_audience(sessions), await new_audience(sessions)
    await add_member(sessions, urn_a, partner_a.tenant_id)
    await add_member(sessions, urn_b, partner_b.tenant_id)
    for urn in (urn_a, urn_b):
        await allow(sessions, lender.tenant_id, urn=urn)
    await allow(sessions, lender.tenant_id, target_tenant_id=other.tenant_id)
    user = await create_user(client, lender)
    return World(lender, other, partner_a, partner_b, outsider, urn_a, urn_b, user)
