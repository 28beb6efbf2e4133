"""``/oauth/introspect`` and ``/oauth/revoke`` for a gateway tenant.

Introspection (RFC 7662):
    * A token broker recorded (issued through the gateway) is judged locally first: a caller that is not
      its owner, requester, holder or an active party, and any revoked, rotated or expired token, gets
      ``{active: false}`` without the upstream being asked (local revocation takes effect at once, even
      while the upstream is down).
    * A broker refresh token of held mode is broker's own: it is described locally (``iss`` is broker).
    * Every other token (the upstream's access tokens, transparent refresh tokens, tokens broker never
      saw) is introspected upstream with the caller's upstream credentials, a safe call that may be
      retried, and the upstream's answer is relayed (its fields, broker's ``request_id``).

Revocation (RFC 7009):
    * Applied locally first, exactly as in issuer mode (lineage cascade, party withdrawal, refusal of
      non-parties, which is audited and never forwarded), and in the same transaction the upstream
      revocation is queued (:mod:`.calls`): the held upstream refresh token for a broker refresh token,
      else the presented token. A token broker never saw is forwarded as it is.
    * After commit the call is tried once; if the upstream is down it is retried from the outbox until
      it succeeds. The caller gets 200 either way (RFC 7009 §2.2).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker.audit import service as audit
from broker.crypto import tokens
from broker.gateway import calls, repository
from broker.gateway.held import open_held
from broker.oauth import introspection, revocation
from broker.oauth import repository as oauth_repository
from broker.oauth.introspection import token_kind, visible_to
from broker.tenants.clients import StaleClient

if TYPE_CHECKING:
    import uuid

    from sqlalchemy.engine import Row
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.db.models import UpstreamGrant
    from broker.gateway.client import Upstream
    from broker.tenants.clients import AuthenticatedClient

INTROSPECTION_FIELDS: dict[str, type] = {
    "scope": str,
    "client_id": str,
    "sub": str,
    "aud": str,
    "iss": str,
    "exp": int,
    "iat": int,
    "token_type": str,
    "user_id": str,
}


async def _find(
    session: AsyncSession, runtime: Runtime, caller: AuthenticatedClient, token: str
) -> tuple[str, Row[Any]] | None:
    """The locally recorded token (access or refresh), by digest; unprefixed tokens are tried as both."""
    digest = tokens.digest(runtime.ring.hash_key, token)
    kind = token_kind(token)
    for candidate in (kind,) if kind is not None else ("access", "refresh"):
        if candidate == "access":
            row = await oauth_repository.describe_access(session, digest, caller.id)
        else:
            row = await oauth_repository.describe_refresh(session, digest, caller.id)
        if row is not None:
            return candidate, row
    return None


async def _held_token(session: AsyncSession, runtime: Runtime, held: UpstreamGrant) -> str | None:
    return await open_held(session, runtime.ring, held)


ASK_UPSTREAM = "ask-upstream"


async def introspect(
    runtime: Runtime, caller: AuthenticatedClient, upstream: Upstream, token: str, request_id: str
) -> dict[str, Any] | None:
    """The introspection fields of an active token (see the module docstring), or None for ``active: false``.

    Raises:
        UpstreamError: the upstream refused (relayed) or failed (502/503).
    """
    local: dict[str, Any] | str | None
    if token_kind(token) == "access":
        # The hot path's one statement: re-checks the (possibly cached) caller, judges, audits.
        row = await introspection.lookup(runtime, caller, "access", token, request_id)
        known = row["grant_id"] is not None
        local = None if known and (not row["visible"] or not introspection.is_live(row)) else ASK_UPSTREAM
    else:
        if caller.from_cache:
            raise StaleClient  # this path does not re-check a cached snapshot: authenticate again
        async with runtime.sessions() as session, session.begin():
            local = await _judge_locally(session, runtime, caller, upstream, token=token, request_id=request_id)
    if local != ASK_UPSTREAM:
        return local if isinstance(local, dict) else None
    reply = await runtime.upstreams.post(upstream, "/oauth/introspect", {"token": token}, safe=True)
    if not reply.ok:
        raise reply.refused()
    if reply.body.get("active") is not True:
        return None
    fields: dict[str, Any] = {}
    for name, kind in INTROSPECTION_FIELDS.items():
        value = reply.body.get(name)
        if name == "aud" and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if isinstance(value, kind) and not isinstance(value, bool):
            fields[name] = value
    return fields


async def _judge_locally(
    session: AsyncSession,
    runtime: Runtime,
    caller: AuthenticatedClient,
    upstream: Upstream,
    *,
    token: str,
    request_id: str,
) -> dict[str, Any] | str | None:
    """Local rules first: None (inactive), the fields of a broker token, or :data:`ASK_UPSTREAM`."""
    found = await _find(session, runtime, caller, token)
    if found is None:
        return ASK_UPSTREAM
    kind, row = found
    grant = row.Grant
    visible = visible_to(row, caller)
    if grant.tenant_id != caller.id:
        await audit.record(
            session,
            action="token.introspected",
            actor=caller.client_id,
            tenant_id=grant.tenant_id,
            request_id=request_id,
            grant_id=grant.id,
            user_id=row.user_id,
            outcome="success" if visible else "denied",
            detail={"token_kind": kind, "gateway": upstream.mode},
        )
    live = (
        grant.revoked_at is None
        and not row.ancestor_revoked
        and row.token_revoked_at is None
        and (kind == "access" or row.rotated_at is None)
        and row.expires_at > datetime.now(UTC)
    )
    if not visible or not live:
        return None
    if kind == "refresh":
        held = await repository.upstream_grant(session, grant.id)
        if held is None or await _held_token(session, runtime, held) != token:
            return _describe_local(runtime, kind, row)
    return ASK_UPSTREAM


def _describe_local(runtime: Runtime, kind: str, row: Row[Any]) -> dict[str, Any]:
    grant = row.Grant
    client_id: str = row.holder_client_id or row.requester_client_id
    user_id: str | None = row.user_id
    return {
        "scope": " ".join(grant.scopes),
        "client_id": client_id,
        "sub": user_id or client_id,
        "aud": grant.audience,
        "iss": runtime.settings.issuer,
        "exp": int(row.expires_at.timestamp()),
        "iat": int(row.issued_at.timestamp()),
        "token_type": "refresh_token" if kind == "refresh" else "Bearer",
        "user_id": user_id,
    }


async def revoke(runtime: Runtime, caller: AuthenticatedClient, token: str, request_id: str) -> None:
    """Revoke locally now and upstream through the outbox (see the module docstring)."""
    queued: list[uuid.UUID] = []

    async def applied(session: AsyncSession, kind: str, row: Row[Any]) -> None:
        held = await repository.upstream_grant(session, row.Grant.id)
        if held is None:
            return  # a grant broker issued itself: nothing upstream
        target = token
        if kind == "refresh":
            target = await _held_token(session, runtime, held) or token
        queued.append(
            await calls.enqueue(
                session,
                runtime.ring,
                tenant_id=caller.id,
                operation="revoke",
                payload={"token": target},
                request_id=request_id,
            )
        )

    async with runtime.sessions() as session:
        outcome = await revocation.revoke(session, runtime, caller, token, request_id, on_applied=applied)
    if outcome == "unknown":
        async with runtime.sessions() as session, session.begin():
            queued.append(
                await calls.enqueue(
                    session,
                    runtime.ring,
                    tenant_id=caller.id,
                    operation="revoke",
                    payload={"token": token},
                    request_id=request_id,
                )
            )
    for call_id in queued:
        await calls.attempt(runtime, call_id)
