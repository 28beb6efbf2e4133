"""What every gateway token flow shares: the upstream's token answer, and recording it as a local grant."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from broker import errors, scopes
from broker.audit import service as audit
from broker.gateway import calls, repository
from broker.gateway.held import open_held, upstream_token_aad
from broker.keys import sealing
from broker.oauth import repository as oauth_repository
from broker.oauth.flows.base import (
    IssuedTokens,
    NewGrant,
    TokenRequest,
    create_grant,
    mint_pair,
)
from broker.webhooks import outbox

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.db.models import UpstreamGrant
    from broker.gateway.client import Reply, Upstream


@dataclass(frozen=True, repr=False)
class UpstreamTokens:
    """A token response from the upstream, checked for shape."""

    access_token: str
    refresh_token: str
    expires_in: int
    scope: tuple[str, ...] | None
    request_id: str | None

    def __repr__(self) -> str:
        return f"UpstreamTokens(expires_in={self.expires_in}, request_id={self.request_id!r}, tokens=***)"


@dataclass(frozen=True)
class Plan:
    """What step 1 decided: the grant to record once the upstream has issued."""

    new: NewGrant
    action: str
    detail: dict[str, Any]
    user_id: str | None = None
    parties: tuple[tuple[uuid.UUID, str], ...] = ()
    notify: tuple[tuple[uuid.UUID, str], ...] = ()
    include_token_for: frozenset[uuid.UUID] = field(default_factory=frozenset)
    issued_token_type: str | None = None


def tokens_of(reply: Reply, base_url: str) -> UpstreamTokens:
    """The upstream's token response, checked for shape (a malformed one is a 502)."""
    body = reply.body
    access, refresh, expires_in = body.get("access_token"), body.get("refresh_token"), body.get("expires_in")
    if (
        not isinstance(access, str)
        or not isinstance(refresh, str)
        or not access
        or not refresh
        or not isinstance(expires_in, int)
        or isinstance(expires_in, bool)
        or expires_in <= 0
    ):
        raise errors.UpstreamError(
            "the upstream sent an invalid answer",
            status=502,
            retry_after=2,
            debug=f"token response without the required fields from {base_url}",
        )
    raw_scope = body.get("scope")
    parsed = scopes.parse(raw_scope) if isinstance(raw_scope, str) and raw_scope.strip() else None
    return UpstreamTokens(access, refresh, expires_in, parsed, reply.request_id)


def recorded_scopes(upstream_scope: tuple[str, ...] | None, granted: tuple[str, ...]) -> tuple[str, ...]:
    """What the local grant records: what the upstream granted, never more than local policy allowed."""
    if upstream_scope is None:
        return granted
    return tuple(s for s in upstream_scope if s in granted)


async def forward(runtime: Runtime, upstream: Upstream, body: dict[str, Any]) -> UpstreamTokens:
    """POST a token request upstream (never repeated once sent); relay a refusal."""
    reply = await runtime.upstreams.post(upstream, "/oauth/token", body, safe=False)
    if not reply.ok:
        raise reply.refused()
    return tokens_of(reply, upstream.base_url)


# --- recording what the upstream issued ---------------------------------------------------------------


async def record(
    runtime: Runtime,
    upstream: Upstream,
    request: TokenRequest,
    plan: Plan,
    issued: UpstreamTokens,
    *,
    upstream_user_id: str | None = None,
) -> IssuedTokens:
    """Step 3 for a new grant: the grant, its parties, the sealed upstream token, the pair, the audit event."""
    new, now = plan.new, datetime.now(UTC)
    async with runtime.sessions() as session, session.begin():
        if new.parent is not None and await _revoked_meanwhile(session, new.parent.id):
            await undo_upstream(session, runtime, upstream, issued, request.request_id)
            revoked = True
        else:
            revoked = False
            result = await _store_new(
                session,
                runtime,
                upstream,
                request,
                plan=plan,
                issued=issued,
                now=now,
                upstream_user_id=upstream_user_id,
            )
    if revoked:
        raise errors.InvalidGrant(
            "the subject token was revoked", debug="revoked while the upstream call was in flight"
        )
    return result


async def _store_new(
    session: AsyncSession,
    runtime: Runtime,
    upstream: Upstream,
    request: TokenRequest,
    *,
    plan: Plan,
    issued: UpstreamTokens,
    now: datetime,
    upstream_user_id: str | None,
) -> IssuedTokens:
    new = plan.new
    grant_id = await create_grant(session, new, request.request_id, now)
    if plan.parties:
        await oauth_repository.insert_parties(session, grant_id, plan.parties)
    sealed = await sealing.seal(
        session, runtime.ring, new.tenant_id, issued.refresh_token.encode(), upstream_token_aad(new.tenant_id, grant_id)
    )
    await repository.insert_upstream_grant(
        session,
        {
            "id": grant_id,
            "tenant_id": new.tenant_id,
            "token_enc": sealed,
            "user_id": upstream_user_id,
            "upstream_request_id": issued.request_id,
        },
    )
    pair = await mint_pair(
        session,
        runtime.ring,
        tenant_id=new.tenant_id,
        grant_id=grant_id,
        access_scopes=new.scopes,
        access_ttl=issued.expires_in,
        refresh_ttl=new.refresh_token_ttl,
        now=now,
        access=issued.access_token,
        refresh=None if upstream.held else issued.refresh_token,
    )
    await audit.record(
        session,
        action=plan.action,
        actor=request.client.client_id,
        tenant_id=new.tenant_id,
        request_id=request.request_id,
        grant_id=grant_id,
        user_id=plan.user_id,
        detail={**plan.detail, **gateway_detail(upstream, issued.request_id), "scope": list(new.scopes)},
    )
    if plan.notify:
        await outbox.grant_shared(
            session,
            runtime.ring,
            grant_id=grant_id,
            owner_tenant_id=new.tenant_id,
            kind=new.kind,
            requester=request.client.client_id,
            audience=new.audience,
            scope=new.scopes,
            user_id=plan.user_id,
            parties=plan.notify,
            refresh_token=pair.refresh_token,
            refresh_token_expires_at=now + timedelta(seconds=new.refresh_token_ttl),
            include_token_for=plan.include_token_for,
        )
    return IssuedTokens(
        pair.access_token, pair.refresh_token, issued.expires_in, new.scopes, grant_id, plan.issued_token_type
    )


def gateway_detail(upstream: Upstream, upstream_request_id: str | None) -> dict[str, Any]:
    """The audit detail every gateway event carries: the mode, the upstream, the upstream's request id."""
    return {"gateway": upstream.mode, "upstream": upstream.base_url, "upstream_request_id": upstream_request_id}


async def _revoked_meanwhile(session: AsyncSession, grant_id: uuid.UUID) -> bool:
    """Whether a grant or one of its ancestors is revoked now (checked again after the upstream call)."""
    return not await repository.grant_live(session, grant_id)


async def undo_upstream(
    session: AsyncSession, runtime: Runtime, upstream: Upstream, issued: UpstreamTokens, request_id: str
) -> None:
    """Queue the upstream revocation of tokens issued for a grant that died during the call."""
    await calls.enqueue(
        session,
        runtime.ring,
        tenant_id=upstream.tenant_id,
        operation="revoke",
        payload={"token": issued.refresh_token},
        request_id=request_id,
    )


async def open_held_or_refuse(session: AsyncSession, runtime: Runtime, held: UpstreamGrant) -> str:
    """A grant's held upstream refresh token; ``invalid_grant`` when it cannot be opened (shredded key)."""
    token = await open_held(session, runtime.ring, held)
    if token is None:
        raise errors.InvalidGrant("invalid refresh token", debug="held upstream token unreadable")
    return token
