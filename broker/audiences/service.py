"""Audiences (CRA partners and other named recipients), their partner clients, and target resolution.

An audience is a URN such as ``urn:plaid:params:cra-partner:experian`` that stands for one or more
partner clients (its *members*). A token exchanged toward an audience makes every active member a party
(BRIEF §3, "Audiences"). Which tenant may target which audience or client, with which scopes and
lifetimes, is an *audience policy* (:mod:`broker.audiences.policies`).

URNs follow RFC 8141's ``urn:<NID>:<NSS>`` shape, restricted so that an URN is safe everywhere broker
uses it: no ``/``, ``?`` or ``#`` (it is a path segment of the admin API), no ``,`` or whitespace (a
token-exchange ``audience`` is a comma list), at most 255 characters.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker import errors
from broker.audiences import repository
from broker.audit import service as audit
from broker.db.models import Audience
from broker.tenants import repository as tenants_repository

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.db.models import Tenant

MAX_URN_CHARS = 255
MAX_DISPLAY_NAME_CHARS = 200
_URN = re.compile(r"^urn:[A-Za-z0-9][A-Za-z0-9-]{0,30}[A-Za-z0-9]:[A-Za-z0-9\-._~!$&'()*+;=:@]+$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class AudienceView:
    """An audience with its members' client ids (sorted)."""

    audience: Audience
    members: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedTarget:
    """One ``audience`` entry of a token exchange, resolved against the caller's policies.

    Attributes:
        entry: The entry as given (a client id or an audience URN).
        partner_tenant_ids: The tenants that become parties: the tenant itself for a client id, every
            active member for an audience URN (sorted).
        allowed_scopes: The policy's scope ceiling; None means the policy does not restrict scopes.
        access_token_ttl: The policy's access token lifetime in seconds; None means "use the default".
        refresh_token_ttl: The policy's refresh token lifetime in seconds; None means "use the default".
        webhook_include_refresh_token: Whether ``grant.shared`` webhooks to these parties carry the
            shared refresh token.
    """

    entry: str
    partner_tenant_ids: tuple[uuid.UUID, ...]
    allowed_scopes: tuple[str, ...] | None
    access_token_ttl: int | None
    refresh_token_ttl: int | None
    webhook_include_refresh_token: bool = False


def is_urn(value: str) -> bool:
    """Whether ``value`` is shaped like an audience URN (it may still be unregistered)."""
    return len(value) <= MAX_URN_CHARS and bool(_URN.match(value))


def validate_urn(urn: str) -> str:
    """Check an audience URN's shape.

    Raises:
        ValidationFailed: not ``urn:<nid>:<nss>``, or it holds ``/``, ``?``, ``#``, ``,`` or whitespace.
    """
    if not is_urn(urn):
        raise errors.ValidationFailed(
            "urn must look like urn:<namespace>:<name> (at most 255 characters; "
            "no '/', '?', '#', ',' or whitespace), e.g. urn:plaid:params:cra-partner:experian"
        )
    return urn


def validate_display_name(display_name: str) -> str:
    """A display name, trimmed: 1 to 200 characters without control characters.

    Raises:
        ValidationFailed: empty, too long, or holding control characters.
    """
    cleaned = display_name.strip()
    if not cleaned or len(cleaned) > MAX_DISPLAY_NAME_CHARS or _CONTROL.search(cleaned):
        raise errors.ValidationFailed(
            f"display_name must be 1 to {MAX_DISPLAY_NAME_CHARS} characters without control characters"
        )
    return cleaned


async def list_audiences(session: AsyncSession) -> list[AudienceView]:
    """Every audience, ordered by URN, with its members (one query)."""
    return [AudienceView(a, tuple(m)) for a, m in await repository.with_members(session)]


async def get_audience(session: AsyncSession, urn: str) -> AudienceView:
    """One audience with its members.

    Raises:
        NotFound: no audience has this URN.
    """
    rows = await repository.with_members(session, urn)
    if not rows:
        raise errors.NotFound("no audience with that urn")
    audience, members = rows[0]
    return AudienceView(audience, tuple(members))


async def create_audience(
    session: AsyncSession, urn: str, display_name: str, *, actor: str, request_id: str | None
) -> AudienceView:
    """Register an audience. The caller owns the transaction.

    Raises:
        ValidationFailed: malformed URN or display name.
        Conflict: the URN is already registered.
    """
    audience = await repository.insert(session, validate_urn(urn), validate_display_name(display_name))
    if audience is None:
        raise errors.Conflict(f"audience {urn!r} already exists")
    await audit.record(
        session,
        action="audience.created",
        actor=actor,
        tenant_id=None,
        request_id=request_id,
        detail={"urn": urn, "display_name": audience.display_name},
    )
    return AudienceView(audience, ())


async def rename_audience(
    session: AsyncSession, urn: str, display_name: str, *, actor: str, request_id: str | None
) -> AudienceView:
    """Change an audience's display name. The caller owns the transaction.

    Raises:
        ValidationFailed: malformed display name.
        NotFound: no audience has this URN.
    """
    cleaned = validate_display_name(display_name)
    if await repository.rename(session, urn, cleaned) is None:
        raise errors.NotFound("no audience with that urn")
    await audit.record(
        session,
        action="audience.updated",
        actor=actor,
        tenant_id=None,
        request_id=request_id,
        detail={"urn": urn, "display_name": cleaned},
    )
    return await get_audience(session, urn)


async def _audience_and_partner(session: AsyncSession, urn: str, client_id: str) -> tuple[Audience, Tenant]:
    audience = await repository.by_urn(session, urn)
    if audience is None:
        raise errors.NotFound("no audience with that urn")
    tenant = await tenants_repository.by_client_id(session, client_id)
    if tenant is None:
        raise errors.NotFound("no tenant with that client_id")
    return audience, tenant


async def add_member(
    session: AsyncSession, urn: str, client_id: str, *, actor: str, request_id: str | None
) -> AudienceView:
    """Map a partner client to an audience (idempotent). The caller owns the transaction.

    Invariant: only tenants of kind ``partner`` act for an audience.

    Raises:
        NotFound: unknown audience or client.
        ValidationFailed: the client is not a partner.
    """
    audience, tenant = await _audience_and_partner(session, urn, client_id)
    if tenant.kind != "partner":
        raise errors.ValidationFailed(f"client {client_id!r} is a {tenant.kind}; only partner clients can be members")
    if await repository.add_member(session, audience.id, tenant.id):
        await audit.record(
            session,
            action="audience.member_added",
            actor=actor,
            tenant_id=tenant.id,
            request_id=request_id,
            detail={"urn": urn, "client_id": client_id},
        )
    return await get_audience(session, urn)


async def remove_member(
    session: AsyncSession, urn: str, client_id: str, *, actor: str, request_id: str | None
) -> AudienceView:
    """Unmap a partner client from an audience. The caller owns the transaction.

    Existing grants are untouched: removing a party from live grants is a grant operation.

    Raises:
        NotFound: unknown audience or client, or the client is not a member.
    """
    audience, tenant = await _audience_and_partner(session, urn, client_id)
    if not await repository.remove_member(session, audience.id, tenant.id):
        raise errors.NotFound("that client is not a member of this audience")
    await audit.record(
        session,
        action="audience.member_removed",
        actor=actor,
        tenant_id=tenant.id,
        request_id=request_id,
        detail={"urn": urn, "client_id": client_id},
    )
    return await get_audience(session, urn)


def _refused(entry: str, reason: str) -> errors.InvalidTarget:
    # The same description whatever the reason, so a caller cannot probe which client ids exist.
    shown = entry if len(entry) <= 100 else entry[:100] + "..."  # noqa: PLR2004
    return errors.InvalidTarget(f"audience {shown!r} is not allowed for this client", debug=reason)


def _storable(entry: str) -> bool:
    if not entry or "\x00" in entry or len(entry) > MAX_URN_CHARS:
        return False
    try:
        entry.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def resolve_targets(session: AsyncSession, tenant_id: uuid.UUID, entries: list[str]) -> list[ResolvedTarget]:
    """Resolve the ``audience`` entries of a token exchange requested by ``tenant_id``, all or nothing.

    Each entry is an audience URN (it starts with ``urn:``) or a client id. An entry is allowed only if
    it is registered, ``tenant_id`` has a policy toward it, and it yields at least one active party: a
    client id must name an active tenant, an audience must have at least one active member (disabled
    members are left out). ``tenant_id`` can never target itself (no such policy can exist). Runs at
    most two queries whatever the number of entries (one for client ids, one for URNs), inside the
    caller's transaction.

    Args:
        session: The caller's session.
        tenant_id: The requesting tenant.
        entries: Trimmed audience entries; duplicates are resolved once.

    Returns:
        One :class:`ResolvedTarget` per distinct entry, in the order first given.

    Raises:
        InvalidTarget: any entry is unknown, not allowed by a policy, a disabled client or an audience
            without active members (RFC 8693 §2.2.2). The description names the entry, never the reason.
    """
    distinct = list(dict.fromkeys(entries))
    for entry in distinct:
        if not _storable(entry):
            raise _refused(entry, "malformed audience entry")
    urns = [e for e in distinct if e[:4].lower() == "urn:"]
    client_ids = [e for e in distinct if e[:4].lower() != "urn:"]
    clients = {row.client_id: row for row in await repository.client_targets(session, tenant_id, client_ids)}
    audiences = {row.urn: row for row in await repository.audience_targets(session, tenant_id, urns)}
    resolved: list[ResolvedTarget] = []
    for entry in distinct:
        client = clients.get(entry)
        audience = audiences.get(entry)
        policy: repository.ClientTargetRow | repository.AudienceTargetRow
        if client is not None:
            if client.policy_id is None:
                raise _refused(entry, "no policy toward this client")
            if client.status != "active":
                raise _refused(entry, "target client is disabled")
            parties: tuple[uuid.UUID, ...] = (client.tenant_id,)
            policy = client
        elif audience is not None:
            if audience.policy_id is None:
                raise _refused(entry, "no policy toward this audience")
            if not audience.member_ids:
                raise _refused(entry, "audience has no active member")
            parties = tuple(audience.member_ids)
            policy = audience
        else:
            raise _refused(entry, "unknown client id or audience")
        resolved.append(
            ResolvedTarget(
                entry=entry,
                partner_tenant_ids=parties,
                allowed_scopes=tuple(policy.allowed_scopes) if policy.allowed_scopes is not None else None,
                access_token_ttl=policy.access_token_ttl,
                refresh_token_ttl=policy.refresh_token_ttl,
                webhook_include_refresh_token=policy.webhook_include_refresh_token,
            )
        )
    return resolved
