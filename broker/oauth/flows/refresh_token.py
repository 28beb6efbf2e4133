"""``refresh_token`` (RFC 6749 §6) with rotation, a retry grace window and replay detection.

Invariants:
    * One locked transaction per use: the presented token's row is taken ``FOR UPDATE``, so N
      concurrent refreshes of one token mint exactly one successor pair.
    * Presenting the immediate predecessor again within ``refresh_grace_seconds`` (and before its
      successor was used) returns the same successor pair, opened from its sealed copy: a client that
      lost the response is not locked out.
    * Any other reuse of a rotated token is a replay (RFC 6819 §5.2.2.3, RFC 9700 §4.14.2): the whole
      family (the grant and every descendant) is revoked in a committed transaction and the request
      fails with ``invalid_grant``.
    * A multi-party shared token never rotates. Each party that presents it with its own credentials
      forks its own rotating lineage (a ``party`` grant) under the shared grant; non-parties and
      withdrawn parties get ``invalid_grant``.
    * Scope may only narrow (RFC 6749 §6): the access token carries the requested subset, the
      lineage keeps the grant's scope.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from broker import errors, scopes
from broker.audit import service as audit
from broker.crypto import tokens
from broker.crypto.envelope import EnvelopeError
from broker.oauth import repository
from broker.oauth.flows.base import (
    DeferredFailure,
    Flow,
    IssuedTokens,
    NewGrant,
    TokenRequest,
    grant_is_live,
    issue_grant,
    mint_pair,
    open_retry_pair,
    seal_retry_pair,
)
from broker.observability import metrics
from broker.webhooks import outbox

if TYPE_CHECKING:
    import uuid
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.db.models import Grant, RefreshToken


class RefreshTokenFlow(Flow):
    """Rotate a refresh token, or fork a party lineage from a shared multi-party token."""

    grant_type = "refresh_token"

    async def issue(self, session: AsyncSession, runtime: Runtime, request: TokenRequest) -> IssuedTokens:
        """See the module docstring."""
        presented = request.require("refresh_token")
        requested = scopes.parse(request.get("scope"))
        row = await repository.refresh_for_update(session, tokens.digest(runtime.ring.hash_key, presented))
        if row is None:
            raise errors.InvalidGrant("invalid refresh token", debug="unknown refresh token")
        token, grant, ancestor_revoked = row.RefreshToken, row.Grant, bool(row.ancestor_revoked)
        client = request.client
        if row.gateway:  # only the gateway (broker.gateway) may refresh what an upstream issued
            raise errors.InvalidGrant("invalid refresh token", debug="a gateway grant presented to a local client")

        if grant.kind == "multi_party":
            return await self._fork(session, runtime, request, token, grant, ancestor_revoked=ancestor_revoked)
        if grant.holder_tenant_id != client.id:
            await self._refuse(session, request, grant, "not the holder")
            raise DeferredFailure(errors.InvalidGrant("invalid refresh token", debug="presented by a non-holder"))
        if not grant_is_live(grant, ancestor_revoked) or token.revoked_at is not None:
            raise errors.InvalidGrant("refresh token revoked", debug="grant or ancestor revoked")
        if token.rotated_at is not None:
            return await self._reuse(session, runtime, request, token, grant)
        if token.expires_at <= request.now:
            raise errors.InvalidGrant("refresh token expired")

        access_scopes = scopes.narrow(requested, grant.scopes, grant.scopes)
        pair = await mint_pair(
            session,
            runtime.ring,
            tenant_id=grant.tenant_id,
            grant_id=grant.id,
            access_scopes=access_scopes,
            access_ttl=grant.access_token_ttl,
            refresh_ttl=grant.refresh_token_ttl,
            now=request.now,
            parent_refresh_id=token.id,
        )
        issued = IssuedTokens(pair.access_token, pair.refresh_token, grant.access_token_ttl, access_scopes, grant.id)
        sealed = await seal_retry_pair(session, runtime.ring, token.id, grant.tenant_id, issued, now=request.now)
        await repository.mark_rotated(session, token.id, pair.refresh_id, sealed, request.now)
        if token.parent_id is not None:
            await repository.forget_retry_pair(session, token.parent_id)
        await audit.record(
            session,
            action="token.refreshed",
            actor=client.client_id,
            tenant_id=grant.tenant_id,
            request_id=request.request_id,
            grant_id=grant.id,
            detail={"scope": list(access_scopes)},
        )
        return issued

    async def _reuse(
        self, session: AsyncSession, runtime: Runtime, request: TokenRequest, token: RefreshToken, grant: Grant
    ) -> IssuedTokens:
        """A rotated token presented again: the same pair inside the grace window, else a replay."""
        grace = timedelta(seconds=runtime.settings.refresh_grace_seconds)
        assert token.rotated_at is not None  # noqa: S101 - checked by the caller
        sealed = token.retry_pair_enc
        within_grace = request.now - token.rotated_at <= grace and sealed is not None
        if within_grace and token.successor_id is not None and sealed is not None:
            successor_used = await repository.successor_rotated(session, token.successor_id)
            # An unreadable retry pair (say, a shredded data key) is treated as a replay: fail closed.
            with contextlib.suppress(EnvelopeError):
                if not successor_used:
                    return await open_retry_pair(
                        session, runtime.ring, token.id, grant.tenant_id, sealed, now=request.now
                    )
        await revoke_replayed_family(session, runtime, request, grant, now=request.now)
        raise DeferredFailure(errors.InvalidGrant("refresh token already used", debug="replay; family revoked"))

    async def _fork(
        self,
        session: AsyncSession,
        runtime: Runtime,
        request: TokenRequest,
        token: RefreshToken,
        shared: Grant,
        *,
        ancestor_revoked: bool,
    ) -> IssuedTokens:
        """A party presents the shared multi-party token: fork its own rotating lineage."""
        client = request.client
        if not await repository.active_party(session, shared.id, client.id):
            await self._refuse(session, request, shared, "not a party")
            raise DeferredFailure(errors.InvalidGrant("invalid refresh token", debug="not an active party"))
        if not grant_is_live(shared, ancestor_revoked) or token.revoked_at is not None:
            raise errors.InvalidGrant("refresh token revoked")
        if token.expires_at <= request.now:
            raise errors.InvalidGrant("refresh token expired")
        granted = scopes.narrow(scopes.parse(request.get("scope")), shared.scopes, shared.scopes)
        new = NewGrant(
            kind="party",
            tenant_id=shared.tenant_id,
            requester_tenant_id=client.id,
            holder_tenant_id=client.id,
            parent=shared,
            user_pk=shared.user_pk,
            scopes=granted,
            audience=shared.audience,
            subject_token_type=shared.subject_token_type,
            access_token_ttl=shared.access_token_ttl,
            refresh_token_ttl=shared.refresh_token_ttl,
        )
        detail = {"shared_grant_id": str(shared.id)}
        return await issue_grant(session, runtime, request, new, action="token.party_forked", detail=detail)

    async def _refuse(self, session: AsyncSession, request: TokenRequest, grant: Grant, reason: str) -> None:
        await audit_refusal(session, request, grant, {"reason": reason})


async def revoke_replayed_family(
    session: AsyncSession,
    runtime: Runtime,
    request: TokenRequest,
    grant: Grant,
    *,
    now: datetime,
    detail: dict[str, Any] | None = None,
) -> list[uuid.UUID]:
    """A replayed refresh token: revoke its family, audit and count the replay, queue ``grant.revoked``.

    Shared by issuer mode and the gateway (RFC 6819 §5.2.2.3); runs in the caller's transaction, which
    must commit even though the request fails. Returns the grants revoked.
    """
    metrics.REPLAYS.inc()
    revoked = await repository.revoke_subtree(session, grant.id, "refresh_token.replayed", now)
    await audit.record(
        session,
        action="token.replay_detected",
        actor=request.client.client_id,
        tenant_id=grant.tenant_id,
        request_id=request.request_id,
        grant_id=grant.id,
        outcome="denied",
        detail={"revoked_grants": len(revoked), **(detail or {})},
    )
    await outbox.grants_revoked(session, runtime.ring, revoked, reason="refresh_token.replayed", grant_id=grant.id)
    return revoked


async def audit_refusal(session: AsyncSession, request: TokenRequest, grant: Grant, detail: dict[str, Any]) -> None:
    """Audit a refresh refused to its caller (not the holder, not a party); shared with the gateway."""
    await audit.record(
        session,
        action="token.refresh_refused",
        actor=request.client.client_id,
        tenant_id=grant.tenant_id,
        request_id=request.request_id,
        grant_id=grant.id,
        outcome="denied",
        detail=detail,
    )
