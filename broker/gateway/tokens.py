"""``/oauth/token`` for a gateway tenant: local policy first, then the upstream, then the local record.

Every flow runs in three steps, and no database session is open during the upstream call:

1. a short transaction checks local policy exactly as issuer mode does (tenant status is checked by
   authentication; scopes narrow against the tenant and the audience policies; audiences must be
   allowed, all or nothing; subject tokens must be live and held by the caller). A refusal here never
   reaches the upstream;
2. the request goes upstream with the tenant's upstream credentials injected (:mod:`.client`);
   audiences are translated to the parties' identities there (see :func:`translate_audiences`);
3. a second transaction records what the upstream issued: a local grant with the same lineage,
   parties and audit event as in issuer mode, the upstream refresh token sealed in ``upstream_grants``,
   and the token pair the caller receives, found by digest like broker's own.

Modes (per tenant):
    * ``held`` (the default): the caller receives the upstream's access token (so partners can use it at
      the upstream's APIs) and a broker ``pdr-`` refresh token. The upstream refresh token never leaves
      broker: presenting the broker token makes broker refresh upstream with the held token, store the
      upstream's rotated token, and rotate the broker token with the usual 30-second retry pair and
      replay detection.
    * ``transparent``: the caller receives the upstream's tokens unchanged; broker keeps a sealed copy and
      records them so that local policy, revocation and introspection still apply.

Invariants:
    * N concurrent refreshes of one token call the upstream once and yield one new pair: the first takes
      the grant's refresh lease (a column, not a lock held across HTTP); the others wait for it and then
      get the retry pair.
    * An upstream refusal is relayed with its status and error body (and broker's ``request_id``); the
      upstream's request id is kept in the audit row. Nothing is recorded locally for it.
    * If the local grant was revoked while the upstream call was in flight, what the upstream just issued
      is revoked upstream too (through the upstream call outbox) and the caller gets ``invalid_grant``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from broker import errors, scopes
from broker.audiences import service as audiences
from broker.audit import service as audit
from broker.crypto import tokens
from broker.crypto.envelope import EnvelopeError
from broker.db.models import Grant
from broker.gateway import calls, hot, repository
from broker.gateway.held import open_held, upstream_token_aad
from broker.keys import sealing
from broker.oauth import repository as oauth_repository
from broker.oauth.audience import parse_audiences
from broker.oauth.flows.base import (
    ACCESS_TOKEN_TYPE,
    REFRESH_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    IssuedTokens,
    NewGrant,
    TokenRequest,
    create_grant,
    grant_is_live,
    mint_pair,
    open_retry_pair,
    seal_retry_pair,
    ttl,
)
from broker.oauth.flows.token_exchange import MULTI_USER, OAUTH_USER_TOKEN, SUBJECT_TOKEN_TYPES, USER
from broker.webhooks import outbox

if TYPE_CHECKING:
    from sqlalchemy.engine import Row
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.db.models import RefreshToken, UpstreamGrant
    from broker.gateway.client import Reply, Upstream
    from broker.tenants.clients import AuthenticatedClient

CLIENT_CREDENTIALS = "client_credentials"
REFRESH_TOKEN = "refresh_token"
WAIT_STEP_SECONDS = 0.02


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


def _tokens_of(reply: Reply, base_url: str) -> UpstreamTokens:
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


def _granted(upstream_scope: tuple[str, ...] | None, granted: tuple[str, ...]) -> tuple[str, ...]:
    """What the local grant records: what the upstream granted, never more than local policy allowed."""
    if upstream_scope is None:
        return granted
    return tuple(s for s in upstream_scope if s in granted)


async def _forward(runtime: Runtime, upstream: Upstream, body: dict[str, Any]) -> UpstreamTokens:
    """POST a token request upstream (never repeated once sent); relay a refusal."""
    reply = await runtime.upstreams.post(upstream, "/oauth/token", body, safe=False)
    if not reply.ok:
        raise reply.refused()
    return _tokens_of(reply, upstream.base_url)


async def issue_token(
    runtime: Runtime,
    client: AuthenticatedClient,
    upstream: Upstream,
    params: dict[str, list[str]],
    request_id: str,
) -> IssuedTokens:
    """Serve ``/oauth/token`` for a gateway tenant (see the module docstring).

    Raises:
        OAuthError: a local policy refusal (the upstream is not called).
        UpstreamError: the upstream refused (relayed) or failed (502/503).
    """
    request = TokenRequest(client=client, params=params, request_id=request_id, now=datetime.now(UTC))
    grant_type = request.get("grant_type")
    if grant_type is None:
        raise errors.InvalidRequest("missing required parameter 'grant_type'")
    flow = {CLIENT_CREDENTIALS: _client_credentials, REFRESH_TOKEN: _refresh, TOKEN_EXCHANGE: _exchange}.get(grant_type)
    if flow is None:
        raise errors.UnsupportedGrantType("unsupported grant_type")
    try:
        return await flow(runtime, upstream, request)
    except errors.UpstreamError as exc:
        await audit_upstream_error(runtime, client, upstream, exc, request_id, action="token.upstream_refused")
        raise


async def audit_upstream_error(
    runtime: Runtime,
    client: AuthenticatedClient,
    upstream: Upstream,
    exc: errors.UpstreamError,
    request_id: str,
    *,
    action: str,
) -> None:
    """Audit an upstream refusal or failure: broker's request id, the upstream's, status and error code."""
    code = None
    if exc.body is not None:
        raw = exc.body.get("error") or exc.body.get("error_code")
        code = raw if isinstance(raw, str) else None
    async with runtime.sessions() as session, session.begin():
        await audit.record(
            session,
            action=action if exc.body is not None else "gateway.upstream_failed",
            actor=client.client_id,
            tenant_id=client.id,
            request_id=request_id,
            outcome="denied" if exc.body is not None else "failure",
            detail={
                "status": exc.http_status,
                "error": code,
                **_gateway_detail(upstream, exc.upstream_request_id),
            },
        )


# --- client_credentials -----------------------------------------------------------------------------


async def _client_credentials(runtime: Runtime, upstream: Upstream, request: TokenRequest) -> IssuedTokens:
    client, settings = request.client, runtime.settings
    granted = scopes.narrow(scopes.parse(request.get("scope")), client.allowed_scopes, client.default_scopes)
    body: dict[str, Any] = {"grant_type": CLIENT_CREDENTIALS, "scope": scopes.render(granted)}
    resource = request.get("resource")
    if resource is not None:
        body["resource"] = resource  # the upstream's resource indicators, not broker's
    issued = await _forward(runtime, upstream, body)
    return await hot.record_client_credentials(
        runtime,
        client,
        upstream,
        access_token=issued.access_token,
        upstream_refresh_token=issued.refresh_token,
        expires_in=issued.expires_in,
        scopes=_granted(issued.scope, granted),
        resource=resource,
        refresh_ttl=ttl(client.refresh_token_ttl, settings.refresh_token_ttl),
        request_id=request.request_id,
        upstream_request_id=issued.request_id,
        now=datetime.now(UTC),
    )


# --- recording what the upstream issued ---------------------------------------------------------------


async def _record(
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
            await _undo_upstream(session, runtime, upstream, issued, request.request_id)
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
        detail={**plan.detail, **_gateway_detail(upstream, issued.request_id), "scope": list(new.scopes)},
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


def _gateway_detail(upstream: Upstream, upstream_request_id: str | None) -> dict[str, Any]:
    return {"gateway": upstream.mode, "upstream": upstream.base_url, "upstream_request_id": upstream_request_id}


async def _revoked_meanwhile(session: AsyncSession, grant_id: uuid.UUID) -> bool:
    """Whether a grant or one of its ancestors is revoked now (checked again after the upstream call)."""
    return not await repository.grant_live(session, grant_id)


async def _undo_upstream(
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


# --- refresh_token --------------------------------------------------------------------------------------


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


async def _refresh(runtime: Runtime, upstream: Upstream, request: TokenRequest) -> IssuedTokens:
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
    body = {"grant_type": REFRESH_TOKEN, "refresh_token": checked.held_token, "scope": scopes.render(narrowed)}
    if checked.fork:
        return await _fork(runtime, upstream, request, shared=grant, body=body, narrowed=narrowed)
    try:
        issued = await _forward(runtime, upstream, body)
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
    return _Checked(held_token=await _open_held(session, runtime, held), token_id=token.id, grant=grant)


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
    return _Checked(held_token=await _open_held(session, runtime, held), grant=grant, fork=True)


async def _open_held(session: AsyncSession, runtime: Runtime, held: UpstreamGrant) -> str:
    token = await open_held(session, runtime.ring, held)
    if token is None:
        raise errors.InvalidGrant("invalid refresh token", debug="held upstream token unreadable")
    return token


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
        try:
            pair = await open_retry_pair(session, runtime.ring, token.id, grant.tenant_id, sealed, now=now)
        except EnvelopeError:
            pass  # an unreadable retry pair is treated as a replay: fail closed
        else:
            return _Checked(answer=pair)
    revoked = await oauth_repository.revoke_subtree(session, grant.id, "refresh_token.replayed", now)
    await audit.record(
        session,
        action="token.replay_detected",
        actor=request.client.client_id,
        tenant_id=grant.tenant_id,
        request_id=request.request_id,
        grant_id=grant.id,
        outcome="denied",
        detail={"revoked_grants": len(revoked), "gateway": True},
    )
    await outbox.grants_revoked(session, runtime.ring, revoked, reason="refresh_token.replayed", grant_id=grant.id)
    try:
        held_token = await _open_held(session, runtime, held)
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
    await audit.record(
        session,
        action="token.refresh_refused",
        actor=request.client.client_id,
        tenant_id=grant.tenant_id,
        request_id=request.request_id,
        grant_id=grant.id,
        outcome="denied",
        detail={"reason": reason, "gateway": True},
    )


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
            await _undo_upstream(session, runtime, upstream, issued, request.request_id)
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
    recorded = _granted(issued.scope, narrowed)
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
            **_gateway_detail(upstream, issued.request_id),
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
    issued = await _forward(runtime, upstream, body)
    client = request.client
    new = NewGrant(
        kind="party",
        tenant_id=shared.tenant_id,
        requester_tenant_id=client.id,
        holder_tenant_id=client.id,
        parent=shared,
        user_pk=shared.user_pk,
        scopes=_granted(issued.scope, narrowed),
        audience=shared.audience,
        subject_token_type=shared.subject_token_type,
        access_token_ttl=issued.expires_in,
        refresh_token_ttl=shared.refresh_token_ttl,
    )
    plan = Plan(new=new, action="token.party_forked", detail={"shared_grant_id": str(shared.id)})
    async with runtime.sessions() as session, session.begin():
        held = await repository.upstream_grant(session, shared.id)
        user_id = held.user_id if held is not None else None
    return await _record(runtime, upstream, request, plan, issued, upstream_user_id=user_id)


# --- token exchange -------------------------------------------------------------------------------------


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


async def _exchange(runtime: Runtime, upstream: Upstream, request: TokenRequest) -> IssuedTokens:
    raw_type = request.require("subject_token_type")
    subject_type = SUBJECT_TOKEN_TYPES.get(raw_type)
    if subject_type is None:
        raise errors.InvalidRequest("unsupported subject_token_type")
    subject_token = request.require("subject_token")
    if request.get("actor_token") is not None or request.get("actor_token_type") is not None:
        raise errors.InvalidRequest("delegation (actor_token) is not supported")
    requested_type = request.get("requested_token_type")
    if requested_type is not None and requested_type not in {ACCESS_TOKEN_TYPE, REFRESH_TOKEN_TYPE}:
        raise errors.InvalidRequest("unsupported requested_token_type")
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
    issued = await _forward(runtime, upstream, body)
    new = replace(plan.new, scopes=_granted(issued.scope, plan.new.scopes), access_token_ttl=issued.expires_in)
    plan = replace(plan, new=new, issued_token_type=ACCESS_TOKEN_TYPE)
    return await _record(runtime, upstream, request, plan, issued, upstream_user_id=user_id)


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
        held_token = await _open_held(session, runtime, held)
    allowed = _intersect(subject_grant.scopes, target.allowed_scopes)
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
        allowed = _intersect(allowed, target.allowed_scopes)
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


def _intersect(scopes_: Any, allowed: tuple[str, ...] | None) -> tuple[str, ...]:  # noqa: ANN401
    if allowed is None:
        return tuple(scopes_)
    return tuple(s for s in scopes_ if s in allowed)
