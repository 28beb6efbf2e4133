"""``refresh_token`` for a gateway tenant: the local rules first, then one upstream refresh per rotation.

See :mod:`broker.gateway.tokens` for the three steps and the modes. Invariants of this flow:
    * The local rules of :mod:`broker.oauth.flows.refresh_token` apply first (holder, liveness, rotation,
      grace-window retry pair, replay detection revoking the family here and, through the outbox,
      upstream; multi-party forks by active parties only).
    * N concurrent refreshes of one token call the upstream once and yield one new pair: the first takes
      the grant's refresh lease (a column, not a lock held across HTTP); the others wait for it and then
      get the retry pair.
    * If the grant was revoked while the upstream call was in flight, the new upstream token is revoked
      upstream through the outbox and the caller gets ``invalid_grant``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from broker import errors, scopes
from broker.audit import service as audit
from broker.crypto import tokens
from broker.crypto.envelope import EnvelopeError
from broker.db.models import Grant
from broker.gateway import calls, repository
from broker.gateway.held import upstream_token_aad
from broker.gateway.record import (
    Plan,
    UpstreamTokens,
    forward,
    gateway_detail,
    open_held_or_refuse,
    record,
    recorded_scopes,
    undo_upstream,
)
from broker.keys import sealing
from broker.oauth import repository as oauth_repository
from broker.oauth.flows.base import (
    IssuedTokens,
    NewGrant,
    TokenRequest,
    grant_is_live,
    mint_pair,
    open_retry_pair,
    seal_retry_pair,
)
from broker.oauth.flows.refresh_token import audit_refusal, revoke_replayed_family

if TYPE_CHECKING:
    from sqlalchemy.engine import Row
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.db.models import RefreshToken, UpstreamGrant
    from broker.gateway.client import Upstream

WAIT_STEP_SECONDS = 0.02
GRANT_TYPE = "refresh_token"


@dataclass(frozen=True)
class _Checked:
    """What the first transaction of a refresh found: either an answer, or what to send upstream."""

    answer: IssuedTokens | None = None
    error: errors.BrokerError | None = None
    wait: bool = False
    held_token: str | None = None
    token_id: uuid.UUID | None = None
    grant: Grant | None = None
    fork: bool = False


async def refresh(runtime: Runtime, upstream: Upstream, request: TokenRequest) -> IssuedTokens:
    """Serve a ``refresh_token`` request of a gateway tenant (see the module docstring)."""
    presented = request.require("refresh_token")
    requested = scopes.parse(request.get("scope"))
    digest = tokens.digest(runtime.ring.hash_key, presented)
    lease = runtime.settings.upstream_timeout_seconds + runtime.settings.upstream_connect_timeout_seconds + 1
    deadline = time.monotonic() + lease * (2 + runtime.settings.upstream_retries)
    while True:
        async with runtime.sessions() as session, session.begin():
            checked = await _check_refresh(session, runtime, request, digest, lease)
        if checked.error is not None:
            raise checked.error
        if checked.answer is not None:
            return checked.answer
        if not checked.wait:
            break
        if time.monotonic() > deadline:
            raise errors.UpstreamError(
                "a refresh of this token is in progress, retry shortly",
                status=503,
                retry_after=2,
                debug="refresh lease still held",
            )
        await asyncio.sleep(WAIT_STEP_SECONDS)
    grant = checked.grant
    assert grant is not None  # noqa: S101 - set whenever no answer was given
    assert checked.held_token is not None  # noqa: S101
    narrowed = scopes.narrow(requested, grant.scopes, grant.scopes)
    body = {"grant_type": GRANT_TYPE, "refresh_token": checked.held_token, "scope": scopes.render(narrowed)}
    if checked.fork:
        return await _fork(runtime, upstream, request, shared=grant, body=body, narrowed=narrowed)
    try:
        issued = await forward(runtime, upstream, body)
    except BaseException:
        async with runtime.sessions() as session, session.begin():
            await repository.release(session, grant.id)
        raise
    return await _rotate(
        runtime, upstream, request, digest=digest, issued=issued, narrowed=narrowed, held_token=checked.held_token
    )


async def _check_refresh(  # noqa: PLR0911 - one answer per rule, in the order of oauth.flows.refresh_token
    session: AsyncSession, runtime: Runtime, request: TokenRequest, digest: bytes, lease: float
) -> _Checked:
    """Step 1 of a refresh: the local rules of ``oauth.flows.refresh_token``, then the refresh lease."""
    client, now = request.client, datetime.now(UTC)
    row = await oauth_repository.refresh_for_update(session, digest)
    if row is None:
        return _Checked(error=errors.InvalidGrant("invalid refresh token", debug="unknown refresh token"))
    token, grant, ancestor_revoked = row.RefreshToken, row.Grant, bool(row.ancestor_revoked)
    held = await repository.upstream_grant(session, grant.id) if row.gateway else None
    if held is None:
        return _Checked(error=errors.InvalidGrant("invalid refresh token", debug="not a gateway grant"))
    if grant.kind == "multi_party":
        return await _check_fork(session, runtime, request, row, held)
    if grant.holder_tenant_id != client.id:
        await _refused(session, request, grant, "not the holder")
        return _Checked(error=errors.InvalidGrant("invalid refresh token", debug="presented by a non-holder"))
    if not grant_is_live(grant, ancestor_revoked) or token.revoked_at is not None:
        return _Checked(error=errors.InvalidGrant("refresh token revoked", debug="grant or ancestor revoked"))
    if token.rotated_at is not None:
        return await _reuse(session, runtime, request, token=token, grant=grant, held=held)
    if token.expires_at <= now:
        return _Checked(error=errors.InvalidGrant("refresh token expired"))
    if not await repository.take_lease(session, grant.id, now, lease):
        return _Checked(wait=True)
    return _Checked(held_token=await open_held_or_refuse(session, runtime, held), token_id=token.id, grant=grant)


async def _check_fork(
    session: AsyncSession, runtime: Runtime, request: TokenRequest, row: Row[Any], held: UpstreamGrant
) -> _Checked:
    """A party presents a shared multi-party token: it must be an active party of a live grant."""
    token, grant = row.RefreshToken, row.Grant
    if not await oauth_repository.active_party(session, grant.id, request.client.id):
        await _refused(session, request, grant, "not a party")
        return _Checked(error=errors.InvalidGrant("invalid refresh token", debug="not an active party"))
    if not grant_is_live(grant, bool(row.ancestor_revoked)) or token.revoked_at is not None:
        return _Checked(error=errors.InvalidGrant("refresh token revoked"))
    if token.expires_at <= datetime.now(UTC):
        return _Checked(error=errors.InvalidGrant("refresh token expired"))
    return _Checked(held_token=await open_held_or_refuse(session, runtime, held), grant=grant, fork=True)


async def _reuse(
    session: AsyncSession,
    runtime: Runtime,
    request: TokenRequest,
    *,
    token: RefreshToken,
    grant: Grant,
    held: UpstreamGrant,
) -> _Checked:
    """A rotated broker token presented again: the same pair inside the grace window, else a replay."""
    now = datetime.now(UTC)
    grace = timedelta(seconds=runtime.settings.refresh_grace_seconds)
    assert token.rotated_at is not None  # noqa: S101 - checked by the caller
    sealed = token.retry_pair_enc
    if (
        now - token.rotated_at <= grace
        and sealed is not None
        and token.successor_id is not None
        and not await oauth_repository.successor_rotated(session, token.successor_id)
    ):
        # An unreadable retry pair (say, a shredded data key) is treated as a replay: fail closed.
        with contextlib.suppress(EnvelopeError):
            return _Checked(
                answer=await open_retry_pair(session, runtime.ring, token.id, grant.tenant_id, sealed, now=now)
            )
    await revoke_replayed_family(session, runtime, request, grant, now=now, detail={"gateway": True})
    try:
        held_token = await open_held_or_refuse(session, runtime, held)
    except errors.InvalidGrant:
        held_token = None
    if held_token is not None:
        await calls.enqueue(
            session,
            runtime.ring,
            tenant_id=request.client.id,
            operation="revoke",
            payload={"token": held_token},
            request_id=request.request_id,
        )
    return _Checked(error=errors.InvalidGrant("refresh token already used", debug="replay; family revoked"))


async def _refused(session: AsyncSession, request: TokenRequest, grant: Grant, reason: str) -> None:
    await audit_refusal(session, request, grant, {"reason": reason, "gateway": True})


async def _rotate(
    runtime: Runtime,
    upstream: Upstream,
    request: TokenRequest,
    *,
    digest: bytes,
    issued: UpstreamTokens,
    narrowed: tuple[str, ...],
    held_token: str,
) -> IssuedTokens:
    """Step 3 of a refresh: rotate the local token, store the upstream's rotated token, release the lease."""
    now = datetime.now(UTC)
    failure: errors.BrokerError | None = None
    async with runtime.sessions() as session, session.begin():
        row = await oauth_repository.refresh_for_update(session, digest)
        assert row is not None  # noqa: S101 - tokens are never deleted while their grant lives
        token, grant, ancestor_revoked = row.RefreshToken, row.Grant, bool(row.ancestor_revoked)
        if not grant_is_live(grant, ancestor_revoked) or token.revoked_at is not None or token.rotated_at is not None:
            await repository.release(session, grant.id)
            await undo_upstream(session, runtime, upstream, issued, request.request_id)
            failure = errors.InvalidGrant(
                "refresh token revoked", debug="revoked while the upstream call was in flight"
            )
        else:
            result = await _store_rotation(
                session,
                runtime,
                upstream,
                request,
                token=token,
                grant=grant,
                issued=issued,
                narrowed=narrowed,
                now=now,
                held_token=held_token,
            )
    if failure is not None:
        raise failure
    return result


async def _store_rotation(
    session: AsyncSession,
    runtime: Runtime,
    upstream: Upstream,
    request: TokenRequest,
    *,
    token: RefreshToken,
    grant: Grant,
    issued: UpstreamTokens,
    narrowed: tuple[str, ...],
    now: datetime,
    held_token: str,
) -> IssuedTokens:
    upstream_rotated = issued.refresh_token != held_token
    recorded = recorded_scopes(issued.scope, narrowed)
    if not upstream.held and not upstream_rotated:
        # Transparent mode, and the upstream kept its refresh token: the caller keeps it too.
        await repository.insert_access(
            session,
            {
                "digest": tokens.digest(runtime.ring.hash_key, issued.access_token),
                "tenant_id": grant.tenant_id,
                "grant_id": grant.id,
                "scopes": list(recorded),
                "created_at": now,
                "expires_at": now + timedelta(seconds=issued.expires_in),
            },
        )
        await repository.release(session, grant.id)
        result = IssuedTokens(issued.access_token, held_token, issued.expires_in, recorded, grant.id)
    else:
        pair = await mint_pair(
            session,
            runtime.ring,
            tenant_id=grant.tenant_id,
            grant_id=grant.id,
            access_scopes=recorded,
            access_ttl=issued.expires_in,
            refresh_ttl=grant.refresh_token_ttl,
            now=now,
            parent_refresh_id=token.id,
            access=issued.access_token,
            refresh=None if upstream.held else issued.refresh_token,
        )
        result = IssuedTokens(pair.access_token, pair.refresh_token, issued.expires_in, recorded, grant.id)
        sealed_pair = await seal_retry_pair(session, runtime.ring, token.id, grant.tenant_id, result, now=now)
        await oauth_repository.mark_rotated(session, token.id, pair.refresh_id, sealed_pair, now)
        if token.parent_id is not None:
            await oauth_repository.forget_retry_pair(session, token.parent_id)
        sealed = None
        if upstream_rotated:
            sealed = await sealing.seal(
                session,
                runtime.ring,
                grant.tenant_id,
                issued.refresh_token.encode(),
                upstream_token_aad(grant.tenant_id, grant.id),
            )
        await repository.release(session, grant.id, token_enc=sealed, upstream_request_id=issued.request_id)
    await audit.record(
        session,
        action="token.refreshed",
        actor=request.client.client_id,
        tenant_id=grant.tenant_id,
        request_id=request.request_id,
        grant_id=grant.id,
        detail={
            "scope": list(recorded),
            "upstream_rotated": upstream_rotated,
            **gateway_detail(upstream, issued.request_id),
        },
    )
    return result


async def _fork(
    runtime: Runtime,
    upstream: Upstream,
    request: TokenRequest,
    *,
    shared: Grant,
    body: dict[str, Any],
    narrowed: tuple[str, ...],
) -> IssuedTokens:
    """A party presents the shared token: the upstream forks the party's lineage with the party's credentials."""
    issued = await forward(runtime, upstream, body)
    client = request.client
    new = NewGrant(
        kind="party",
        tenant_id=shared.tenant_id,
        requester_tenant_id=client.id,
        holder_tenant_id=client.id,
        parent=shared,
        user_pk=shared.user_pk,
        scopes=recorded_scopes(issued.scope, narrowed),
        audience=shared.audience,
        subject_token_type=shared.subject_token_type,
        access_token_ttl=issued.expires_in,
        refresh_token_ttl=shared.refresh_token_ttl,
    )
    plan = Plan(new=new, action="token.party_forked", detail={"shared_grant_id": str(shared.id)})
    async with runtime.sessions() as session, session.begin():
        held = await repository.upstream_grant(session, shared.id)
        user_id = held.user_id if held is not None else None
    return await record(runtime, upstream, request, plan, issued, upstream_user_id=user_id)
