"""Audience policies: which tenant may exchange toward which audience URN or client, with what ceiling.

A policy belongs to one tenant and names one target: a registered audience URN or another tenant's
client id (never the tenant itself). It carries an optional scope ceiling and optional token lifetimes;
``None`` means "no restriction" for scopes and "the tenant's or server's default" for lifetimes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker import errors, scopes
from broker.audiences import repository
from broker.audit import service as audit
from broker.db.models import AudiencePolicy
from broker.tenants import repository as tenants_repository

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.db.models import Tenant

ACCESS_TTL_RANGE = (60, 86_400)
REFRESH_TTL_RANGE = (300, 400 * 86_400)
MAX_TARGET_CHARS = 255


@dataclass(frozen=True)
class PolicySpec:
    """A policy as an operator writes it."""

    target: str
    allowed_scopes: tuple[str, ...] | None = None
    access_token_ttl: int | None = None
    refresh_token_ttl: int | None = None
    webhook_include_refresh_token: bool = False


@dataclass(frozen=True)
class PolicyView:
    """A policy with its target rendered as the URN (``kind`` ``audience``) or client id (``client``)."""

    policy: AudiencePolicy
    target: str
    target_kind: str


@dataclass(frozen=True)
class _Target:
    audience_id: uuid.UUID | None
    target_tenant_id: uuid.UUID | None
    kind: str


def _validate(spec: PolicySpec) -> tuple[list[str] | None, int | None, int | None]:
    allowed: list[str] | None = None
    if spec.allowed_scopes is not None:
        if not spec.allowed_scopes:
            raise errors.ValidationFailed("allowed_scopes must not be empty (use null for no restriction)")
        if len(spec.allowed_scopes) > scopes.MAX_SCOPES or not all(
            scopes.is_valid_scope_token(s) for s in spec.allowed_scopes
        ):
            raise errors.ValidationFailed("allowed_scopes must be a list of valid scope tokens")
        allowed = sorted(set(spec.allowed_scopes))
    for name, value, (low, high) in (
        ("access_token_ttl", spec.access_token_ttl, ACCESS_TTL_RANGE),
        ("refresh_token_ttl", spec.refresh_token_ttl, REFRESH_TTL_RANGE),
    ):
        if value is not None and not low <= value <= high:
            raise errors.ValidationFailed(f"{name} must be between {low} and {high} seconds")
    return allowed, spec.access_token_ttl, spec.refresh_token_ttl


async def _owner(session: AsyncSession, client_id: str) -> Tenant:
    tenant = await tenants_repository.by_client_id(session, client_id)
    if tenant is None:
        raise errors.NotFound("no tenant with that client_id")
    return tenant


async def _target(session: AsyncSession, owner: Tenant, target: str) -> _Target | None:
    if not target or len(target) > MAX_TARGET_CHARS:
        return None
    if target[:4].lower() == "urn:":
        audience = await repository.by_urn(session, target)
        return None if audience is None else _Target(audience.id, None, "audience")
    tenant = await tenants_repository.by_client_id(session, target)
    if tenant is None:
        return None
    if tenant.id == owner.id:
        raise errors.ValidationFailed("target: a tenant cannot have a policy toward itself")
    return _Target(None, tenant.id, "client")


async def upsert_policy(
    session: AsyncSession, client_id: str, spec: PolicySpec, *, actor: str, request_id: str | None
) -> tuple[PolicyView, bool]:
    """Create or replace the policy of tenant ``client_id`` toward ``spec.target``.

    The caller owns the transaction.

    Returns:
        The policy and whether it was created (rather than replaced).

    Raises:
        NotFound: no tenant has ``client_id``.
        ValidationFailed: the target is neither a registered audience URN nor a client id, is the
            tenant itself, or a scope or lifetime is invalid.
    """
    allowed, access_ttl, refresh_ttl = _validate(spec)
    owner = await _owner(session, client_id)
    target = await _target(session, owner, spec.target)
    if target is None:
        raise errors.ValidationFailed("target must be a registered audience urn or an existing client_id")
    policy, created = await repository.upsert_policy(
        session,
        tenant_id=owner.id,
        audience_id=target.audience_id,
        target_tenant_id=target.target_tenant_id,
        allowed_scopes=allowed,
        access_token_ttl=access_ttl,
        refresh_token_ttl=refresh_ttl,
        webhook_include_refresh_token=spec.webhook_include_refresh_token,
    )
    await audit.record(
        session,
        action="policy.upserted",
        actor=actor,
        tenant_id=owner.id,
        request_id=request_id,
        detail={
            "client_id": client_id,
            "target": spec.target,
            "created": created,
            "allowed_scopes": allowed,
            "access_token_ttl": access_ttl,
            "refresh_token_ttl": refresh_ttl,
            "webhook_include_refresh_token": spec.webhook_include_refresh_token,
        },
    )
    return PolicyView(policy, spec.target, target.kind), created


async def list_policies(session: AsyncSession, client_id: str) -> list[PolicyView]:
    """The policies of tenant ``client_id``, ordered by target.

    Raises:
        NotFound: no tenant has ``client_id``.
    """
    owner = await _owner(session, client_id)
    views = []
    for policy, urn, target_client_id in await repository.policies_of(session, owner.id):
        if urn is not None:
            views.append(PolicyView(policy, urn, "audience"))
        elif target_client_id is not None:
            views.append(PolicyView(policy, target_client_id, "client"))
    return views


async def delete_policy(
    session: AsyncSession, client_id: str, target: str, *, actor: str, request_id: str | None
) -> None:
    """Delete the policy of tenant ``client_id`` toward ``target``. The caller owns the transaction.

    Live grants are untouched; the policy only governs new exchanges.

    Raises:
        NotFound: unknown tenant, unknown target, or no policy toward it.
    """
    owner = await _owner(session, client_id)
    try:
        resolved = await _target(session, owner, target)
    except errors.ValidationFailed:
        resolved = None
    deleted = resolved is not None and await repository.delete_policy(
        session, owner.id, audience_id=resolved.audience_id, target_tenant_id=resolved.target_tenant_id
    )
    if not deleted:
        raise errors.NotFound("this tenant has no policy toward that target")
    await audit.record(
        session,
        action="policy.deleted",
        actor=actor,
        tenant_id=owner.id,
        request_id=request_id,
        detail={"client_id": client_id, "target": target},
    )
