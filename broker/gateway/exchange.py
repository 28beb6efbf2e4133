"""Token exchange (RFC 8693) for a gateway tenant: the three subject token types of issuer mode, upstream.

Local policy exactly as :mod:`broker.oauth.flows.token_exchange` (subject, audiences all or nothing, scopes
only narrow), then audiences translated to the parties' upstream identities (:func:`translate_audiences`);
for ``oauth:user-token`` the held upstream refresh token is the ``subject_token`` sent upstream.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from broker import errors, scopes
from broker.audiences import service as audiences
from broker.crypto import tokens
from broker.gateway import repository
from broker.gateway.record import (
    Plan,
    forward,
    open_held_or_refuse,
    record,
    recorded_scopes,
)
from broker.oauth import repository as oauth_repository
from broker.oauth.audience import parse_audiences
from broker.oauth.flows.base import (
    ACCESS_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    IssuedTokens,
    NewGrant,
    TokenRequest,
    grant_is_live,
    ttl,
)
from broker.oauth.flows.token_exchange import MULTI_USER, OAUTH_USER_TOKEN, USER, exchange_subject

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.gateway.client import Upstream
    from broker.tenants.clients import AuthenticatedClient


async def translate_audiences(
    session: AsyncSession, client: AuthenticatedClient, upstream: Upstream, entries: list[str]
) -> list[str]:
    """The audience entries as the upstream knows them (after local policy allowed them).

    Audience URNs (``urn:...``) are the same everywhere and pass unchanged. A client id names a local
    tenant; it becomes that tenant's client id at the same upstream, which it must have (a partner that
    has no identity there cannot be a party of an upstream grant).

    Raises:
        InvalidTarget: a client id without an identity at this upstream.
    """
    clients = [entry for entry in entries if not entry.startswith("urn:")]
    known = await repository.upstream_client_ids(session, clients, upstream.base_url) if clients else {}
    translated: list[str] = []
    for entry in entries:
        if entry.startswith("urn:"):
            translated.append(entry)
        elif entry == client.client_id:
            translated.append(upstream.client_id)
        elif entry in known:
            translated.append(known[entry][1])
        else:
            raise errors.InvalidTarget(f"audience {entry!r} has no identity at this tenant's upstream")
    return translated


async def exchange(runtime: Runtime, upstream: Upstream, request: TokenRequest) -> IssuedTokens:
    """Serve a token exchange of a gateway tenant (see the module docstring)."""
    subject_type, subject_token = exchange_subject(request)
    body: dict[str, Any] = {"grant_type": TOKEN_EXCHANGE, "subject_token_type": subject_type}
    for name in ("resource", "requested_token_type"):
        value = request.get(name)
        if value is not None:
            body[name] = value
    user_id: str | None
    if subject_type == USER:
        plan, user_id = await _user_plan(runtime, upstream, request, subject_token, body)
    elif subject_type == OAUTH_USER_TOKEN:
        plan, user_id = await _oauth_user_plan(runtime, upstream, request, subject_token, body)
    else:
        plan, user_id = await _multi_user_plan(runtime, upstream, request, subject_token, body)
    issued = await forward(runtime, upstream, body)
    new = replace(plan.new, scopes=recorded_scopes(issued.scope, plan.new.scopes), access_token_ttl=issued.expires_in)
    plan = replace(plan, new=new, issued_token_type=ACCESS_TOKEN_TYPE)
    return await record(runtime, upstream, request, plan, issued, upstream_user_id=user_id)


def _detail(new: NewGrant, parties: int) -> dict[str, Any]:
    return {
        "subject_token_type": new.subject_token_type,
        "audience": new.audience,
        "parties": parties,
        "parent_grant_id": str(new.parent.id) if new.parent is not None else None,
    }


async def _user_plan(
    runtime: Runtime, upstream: Upstream, request: TokenRequest, subject_token: str, body: dict[str, Any]
) -> tuple[Plan, str]:
    client, settings = request.client, runtime.settings
    entries = parse_audiences(request.params.get("audience", [client.client_id]))
    if entries != [client.client_id]:
        raise errors.InvalidTarget("the audience must be the calling client for this subject_token_type")
    granted = scopes.narrow(scopes.parse(request.get("scope")), client.allowed_scopes, client.default_scopes)
    body.update(subject_token=subject_token, audience=upstream.client_id, scope=scopes.render(granted))
    new = NewGrant(
        kind="user",
        tenant_id=client.id,
        requester_tenant_id=client.id,
        holder_tenant_id=client.id,
        scopes=granted,
        audience=client.client_id,
        resource=request.get("resource"),
        subject_token_type=USER,
        access_token_ttl=ttl(client.access_token_ttl, settings.access_token_ttl),
        refresh_token_ttl=ttl(client.refresh_token_ttl, settings.refresh_token_ttl),
    )
    return Plan(new=new, action="token.exchanged", detail=_detail(new, 0), user_id=subject_token), subject_token


async def _oauth_user_plan(
    runtime: Runtime, upstream: Upstream, request: TokenRequest, subject_token: str, body: dict[str, Any]
) -> tuple[Plan, str | None]:
    client, settings, now = request.client, runtime.settings, request.now
    async with runtime.sessions() as session, session.begin():
        row = await oauth_repository.refresh_by_digest(session, tokens.digest(runtime.ring.hash_key, subject_token))
        if row is None or not row.gateway:
            raise errors.InvalidRequest("invalid subject_token", debug="unknown refresh token")
        token, subject_grant, ancestor_revoked = row.RefreshToken, row.Grant, bool(row.ancestor_revoked)
        if subject_grant.holder_tenant_id != client.id:
            raise errors.InvalidRequest("invalid subject_token", debug="subject token not held by the caller")
        if (
            not grant_is_live(subject_grant, ancestor_revoked)
            or token.revoked_at is not None
            or token.rotated_at is not None
            or token.expires_at <= now
        ):
            raise errors.InvalidRequest("invalid subject_token", debug="revoked, rotated or expired")
        if scopes.EXCHANGE not in subject_grant.scopes:
            raise errors.InvalidScope("the subject token does not carry the 'exchange' scope")
        entries = parse_audiences(request.params.get("audience", []))
        if len(entries) != 1:
            raise errors.InvalidTarget("exactly one audience client is required for this subject_token_type")
        (target,) = await audiences.resolve_targets(session, client.id, entries)
        if len(target.partner_tenant_ids) != 1 or target.partner_tenant_ids[0] == client.id:
            raise errors.InvalidTarget("the audience must be one other client")
        translated = await translate_audiences(session, client, upstream, entries)
        held = await repository.upstream_grant(session, subject_grant.id)
        if held is None:
            raise errors.InvalidRequest("invalid subject_token", debug="no upstream token held")
        held_token = await open_held_or_refuse(session, runtime, held)
    allowed = intersect(subject_grant.scopes, target.allowed_scopes)
    granted = scopes.narrow(
        scopes.parse(request.get("scope")), allowed, tuple(s for s in allowed if s != scopes.EXCHANGE)
    )
    body.update(subject_token=held_token, audience=translated[0], scope=scopes.render(granted))
    holder = target.partner_tenant_ids[0]
    new = NewGrant(
        kind="exchange",
        tenant_id=subject_grant.tenant_id,
        requester_tenant_id=client.id,
        holder_tenant_id=holder,
        parent=subject_grant,
        user_pk=subject_grant.user_pk,
        scopes=granted,
        audience=target.entry,
        resource=request.get("resource"),
        subject_token_type=OAUTH_USER_TOKEN,
        access_token_ttl=ttl(target.access_token_ttl, client.access_token_ttl, settings.access_token_ttl),
        refresh_token_ttl=ttl(target.refresh_token_ttl, client.refresh_token_ttl, settings.refresh_token_ttl),
    )
    include = frozenset({holder}) if target.webhook_include_refresh_token else frozenset()
    plan = Plan(
        new=new,
        action="token.exchanged",
        detail=_detail(new, 0),
        notify=((holder, target.entry),),
        include_token_for=include,
    )
    return plan, held.user_id


async def _multi_user_plan(
    runtime: Runtime, upstream: Upstream, request: TokenRequest, subject_token: str, body: dict[str, Any]
) -> tuple[Plan, str]:
    client, settings = request.client, runtime.settings
    entries = parse_audiences(request.params.get("audience", []))
    async with runtime.sessions() as session, session.begin():
        targets = await audiences.resolve_targets(session, client.id, entries)
        translated = await translate_audiences(session, client, upstream, entries)
        # Every party must be able to use its share: an identity at the same upstream (docs/gateway.md).
        members = {tenant_id for target in targets for tenant_id in target.partner_tenant_ids}
        known = await repository.with_upstream(session, list(members), upstream.base_url)
        for target in targets:
            if not set(target.partner_tenant_ids) <= known:
                raise errors.InvalidTarget(
                    f"audience {target.entry!r} has a party without an identity at this upstream"
                )
    allowed: tuple[str, ...] = tuple(client.allowed_scopes)
    for target in targets:
        allowed = intersect(allowed, target.allowed_scopes)
    default = tuple(s for s in client.default_scopes if s in allowed and s != scopes.EXCHANGE)
    granted = scopes.narrow(scopes.parse(request.get("scope")), allowed, default)
    body.update(subject_token=subject_token, audience=",".join(translated), scope=scopes.render(granted))
    parties: dict[uuid.UUID, str] = {}
    for target in targets:
        for tenant_id in target.partner_tenant_ids:
            parties.setdefault(tenant_id, target.entry)
    access_ttls = [t.access_token_ttl for t in targets if t.access_token_ttl is not None]
    refresh_ttls = [t.refresh_token_ttl for t in targets if t.refresh_token_ttl is not None]
    new = NewGrant(
        kind="multi_party",
        tenant_id=client.id,
        requester_tenant_id=client.id,
        holder_tenant_id=None,
        scopes=granted,
        audience=",".join(entries),
        resource=request.get("resource"),
        subject_token_type=MULTI_USER,
        access_token_ttl=ttl(min(access_ttls, default=None), client.access_token_ttl, settings.access_token_ttl),
        refresh_token_ttl=ttl(min(refresh_ttls, default=None), client.refresh_token_ttl, settings.refresh_token_ttl),
    )
    include = frozenset(
        t for target in targets if target.webhook_include_refresh_token for t in target.partner_tenant_ids
    )
    party_list = tuple(parties.items())
    plan = Plan(
        new=new,
        action="token.exchanged",
        detail=_detail(new, len(party_list)),
        user_id=subject_token,
        parties=party_list,
        notify=party_list,
        include_token_for=include,
    )
    return plan, subject_token


def intersect(scopes_: Any, allowed: tuple[str, ...] | None) -> tuple[str, ...]:  # noqa: ANN401
    """The scopes of ``scopes_`` that ``allowed`` permits (all of them when ``allowed`` is None)."""
    if allowed is None:
        return tuple(scopes_)
    return tuple(s for s in scopes_ if s in allowed)
