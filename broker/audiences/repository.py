"""Queries on audiences, their member partner clients, and per-tenant audience policies."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Result, Text, Uuid, any_, bindparam, delete, func, literal_column, select, update
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import InstrumentedAttribute, aliased

from broker.db.models import Audience, AudienceMember, AudiencePolicy, Tenant

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class ClientTargetRow:
    """A tenant named as a target, with the caller's policy toward it (``policy_id`` None when there is none)."""

    client_id: str
    tenant_id: uuid.UUID
    status: str
    policy_id: uuid.UUID | None
    allowed_scopes: list[str] | None
    access_token_ttl: int | None
    refresh_token_ttl: int | None
    webhook_include_refresh_token: bool = False


@dataclass(frozen=True)
class AudienceTargetRow:
    """An audience named as a target, its active members, and the caller's policy toward it."""

    urn: str
    member_ids: list[uuid.UUID]
    policy_id: uuid.UUID | None
    allowed_scopes: list[str] | None
    access_token_ttl: int | None
    refresh_token_ttl: int | None
    webhook_include_refresh_token: bool = False


def _text_array(name: str, values: list[str]) -> Any:  # noqa: ANN401 - a SQL expression
    # One bound array instead of IN (...): the statement text (and its prepared plan) does not vary.
    return any_(bindparam(name, values, type_=ARRAY(Text)))


def _members_of(audience_id: ColumnElement[uuid.UUID] | InstrumentedAttribute[uuid.UUID]) -> Any:  # noqa: ANN401 - a SQL expression
    return (
        select(func.array_agg(aggregate_order_by(Tenant.client_id, Tenant.client_id)))
        .join(AudienceMember, AudienceMember.tenant_id == Tenant.id)
        .where(AudienceMember.audience_id == audience_id)
        .scalar_subquery()
    )


async def by_urn(session: AsyncSession, urn: str) -> Audience | None:
    """The audience with ``urn``."""
    result = await session.execute(select(Audience).where(Audience.urn == urn))
    return result.scalar_one_or_none()


async def with_members(session: AsyncSession, urn: str | None = None) -> list[tuple[Audience, list[str]]]:
    """Audiences (all, or the one with ``urn``) ordered by URN, each with its members' client ids, in one query."""
    query = select(Audience, _members_of(Audience.id)).order_by(Audience.urn)
    if urn is not None:
        query = query.where(Audience.urn == urn)
    result = await session.execute(query)
    return [(row[0], list(row[1] or ())) for row in result.all()]


async def insert(session: AsyncSession, urn: str, display_name: str) -> Audience | None:
    """Insert an audience; None if the URN is taken (no exception, so the transaction stays usable)."""
    result = await session.execute(
        pg_insert(Audience)
        .values(id=uuid.uuid4(), urn=urn, display_name=display_name)
        .on_conflict_do_nothing(index_elements=[Audience.urn])
        .returning(Audience)
    )
    return result.scalar_one_or_none()


async def rename(session: AsyncSession, urn: str, display_name: str) -> Audience | None:
    """Set an audience's display name; None if there is no such audience."""
    result = await session.execute(
        update(Audience)
        .where(Audience.urn == urn)
        .values(display_name=display_name, updated_at=func.now())
        .returning(Audience)
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


async def add_member(session: AsyncSession, audience_id: uuid.UUID, tenant_id: uuid.UUID) -> bool:
    """Map a tenant to an audience; False if it already was."""
    result = await session.execute(
        pg_insert(AudienceMember)
        .values(audience_id=audience_id, tenant_id=tenant_id)
        .on_conflict_do_nothing()
        .returning(AudienceMember.tenant_id)
    )
    return result.first() is not None


async def remove_member(session: AsyncSession, audience_id: uuid.UUID, tenant_id: uuid.UUID) -> bool:
    """Unmap a tenant from an audience; False if it was not mapped."""
    result = await session.execute(
        delete(AudienceMember)
        .where(AudienceMember.audience_id == audience_id, AudienceMember.tenant_id == tenant_id)
        .returning(AudienceMember.tenant_id)
    )
    return result.first() is not None


async def upsert_policy(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    audience_id: uuid.UUID | None,
    target_tenant_id: uuid.UUID | None,
    allowed_scopes: list[str] | None,
    access_token_ttl: int | None,
    refresh_token_ttl: int | None,
    webhook_include_refresh_token: bool = False,
) -> tuple[AudiencePolicy, bool]:
    """Insert or replace the policy of ``tenant_id`` toward one target, in one statement (race-free).

    Exactly one of ``audience_id`` and ``target_tenant_id`` is given.

    Returns:
        The policy row and whether it was created (rather than replaced).
    """
    conflict_column = AudiencePolicy.audience_id if audience_id is not None else AudiencePolicy.target_tenant_id
    statement = pg_insert(AudiencePolicy).values(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        audience_id=audience_id,
        target_tenant_id=target_tenant_id,
        allowed_scopes=allowed_scopes,
        access_token_ttl=access_token_ttl,
        refresh_token_ttl=refresh_token_ttl,
        webhook_include_refresh_token=webhook_include_refresh_token,
    )
    statement = statement.on_conflict_do_update(
        index_elements=[AudiencePolicy.tenant_id, conflict_column],
        set_={
            "allowed_scopes": statement.excluded.allowed_scopes,
            "access_token_ttl": statement.excluded.access_token_ttl,
            "refresh_token_ttl": statement.excluded.refresh_token_ttl,
            "webhook_include_refresh_token": statement.excluded.webhook_include_refresh_token,
            "updated_at": func.now(),
        },
    )
    result: Result[AudiencePolicy, bool] = await session.execute(
        statement.returning(AudiencePolicy, literal_column("(xmax = 0)").label("created")).execution_options(
            populate_existing=True
        )
    )
    row = result.one()
    return row[0], bool(row[1])


async def policies_of(
    session: AsyncSession, tenant_id: uuid.UUID
) -> list[tuple[AudiencePolicy, str | None, str | None]]:
    """A tenant's policies with each target's URN or client id, ordered by target, in one query."""
    target = aliased(Tenant)
    result = await session.execute(
        select(AudiencePolicy, Audience.urn, target.client_id)
        .outerjoin(Audience, Audience.id == AudiencePolicy.audience_id)
        .outerjoin(target, target.id == AudiencePolicy.target_tenant_id)
        .where(AudiencePolicy.tenant_id == tenant_id)
        .order_by(func.coalesce(Audience.urn, target.client_id))
    )
    return [(row[0], row[1], row[2]) for row in result.all()]


async def delete_policy(
    session: AsyncSession, tenant_id: uuid.UUID, *, audience_id: uuid.UUID | None, target_tenant_id: uuid.UUID | None
) -> bool:
    """Delete the policy of ``tenant_id`` toward one target; False if there was none."""
    condition = (
        AudiencePolicy.audience_id == audience_id
        if audience_id is not None
        else AudiencePolicy.target_tenant_id == target_tenant_id
    )
    result = await session.execute(
        delete(AudiencePolicy).where(AudiencePolicy.tenant_id == tenant_id, condition).returning(AudiencePolicy.id)
    )
    return result.first() is not None


_POLICY_COLUMNS = (
    AudiencePolicy.id,
    AudiencePolicy.allowed_scopes,
    AudiencePolicy.access_token_ttl,
    AudiencePolicy.refresh_token_ttl,
    func.coalesce(AudiencePolicy.webhook_include_refresh_token, False),
)
"""What a target row carries of the caller's policy toward it (``ClientTargetRow``/``AudienceTargetRow``)."""
_CLIENT_TARGETS = (
    select(
        Tenant.client_id,
        Tenant.id,
        Tenant.status,
        *_POLICY_COLUMNS,
    )
    .outerjoin(
        AudiencePolicy,
        (AudiencePolicy.target_tenant_id == Tenant.id)
        & (AudiencePolicy.tenant_id == bindparam("tenant_id", type_=Uuid())),
    )
    .where(Tenant.client_id == any_(bindparam("client_ids", type_=ARRAY(Text))))
)
"""Built once, like :data:`_AUDIENCE_TARGETS`: building it per exchange cost more CPU than running it."""


async def client_targets(session: AsyncSession, tenant_id: uuid.UUID, client_ids: list[str]) -> list[ClientTargetRow]:
    """The tenants among ``client_ids`` with ``tenant_id``'s policy toward each (one query)."""
    if not client_ids:
        return []
    result = await session.execute(_CLIENT_TARGETS, {"tenant_id": tenant_id, "client_ids": client_ids})
    return [ClientTargetRow(*row) for row in result.all()]


_member = aliased(Tenant)
_AUDIENCE_TARGETS = (
    select(
        Audience.urn,
        select(func.array_agg(_member.id))
        .join(AudienceMember, AudienceMember.tenant_id == _member.id)
        .where(AudienceMember.audience_id == Audience.id, _member.status == "active")
        .scalar_subquery(),
        *_POLICY_COLUMNS,
    )
    .outerjoin(
        AudiencePolicy,
        (AudiencePolicy.audience_id == Audience.id)
        & (AudiencePolicy.tenant_id == bindparam("tenant_id", type_=Uuid())),
    )
    .where(Audience.urn == any_(bindparam("urns", type_=ARRAY(Text))))
)
"""The audiences among ``urns``, their active members and one tenant's policy toward each; built once."""


async def audience_targets(session: AsyncSession, tenant_id: uuid.UUID, urns: list[str]) -> list[AudienceTargetRow]:
    """The audiences among ``urns`` with their active members and ``tenant_id``'s policy toward each (one query)."""
    if not urns:
        return []
    result = await session.execute(_AUDIENCE_TARGETS, {"tenant_id": tenant_id, "urns": urns})
    return [AudienceTargetRow(row[0], sorted(row[1] or ()), *row[2:]) for row in result.all()]
