"""``/user/create``, ``/user/get``, ``/user/update`` and ``/user/remove`` for a gateway tenant.

The request is validated locally (same shapes and errors as issuer mode), then forwarded with the
tenant's upstream credentials instead of the caller's; the upstream's answer is relayed with broker's
``request_id``. Users of a gateway tenant live at the upstream: broker keeps no copy of them, only the
upstream ``user_id`` that each gateway grant is about.

``/user/remove`` also revokes, locally and at once, every gateway grant of the tenant about that user
(with their descendants), and queues the upstream removal in the same transaction (:mod:`.calls`): if the
upstream is down, the local revocation holds and the removal is retried until the upstream confirms.
A definitive refusal (say ``USER_NOT_FOUND``) is relayed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker import errors
from broker.audit import service as audit
from broker.gateway import calls, repository
from broker.gateway.tokens import audit_upstream_error
from broker.oauth import repository as oauth_repository
from broker.webhooks import outbox

if TYPE_CHECKING:
    from broker.context import Runtime
    from broker.gateway.client import Upstream
    from broker.tenants.clients import AuthenticatedClient

CREDENTIAL_FIELDS = frozenset({"client_id", "secret", "client_secret"})
SAFE_PATHS = frozenset({"/user/get"})
AUDITED = {"/user/create": "user.created", "/user/update": "user.updated"}


async def forward(
    runtime: Runtime,
    client: AuthenticatedClient,
    upstream: Upstream,
    path: str,
    body: dict[str, Any],
    *,
    request_id: str,
) -> dict[str, Any]:
    """Forward a user request upstream and return the upstream's answer with broker's ``request_id``.

    Raises:
        UpstreamError: the upstream refused (relayed) or failed (502/503).
    """
    payload = {name: value for name, value in body.items() if name not in CREDENTIAL_FIELDS}
    try:
        reply = await runtime.upstreams.post(upstream, path, payload, safe=path in SAFE_PATHS)
        if not reply.ok:
            raise reply.refused()
    except errors.UpstreamError as exc:
        await audit_upstream_error(runtime, client, upstream, exc, request_id, action="user.upstream_refused")
        raise
    action = AUDITED.get(path)
    if action is not None:
        user_id = reply.body.get("user_id") or body.get("user_id")
        async with runtime.sessions() as session, session.begin():
            await audit.record(
                session,
                action=action,
                actor=client.client_id,
                tenant_id=client.id,
                request_id=request_id,
                user_id=user_id if isinstance(user_id, str) else None,
                detail={"gateway": upstream.mode, "upstream_request_id": reply.request_id},
            )
    return {**reply.body, "request_id": request_id}


async def remove(
    runtime: Runtime, client: AuthenticatedClient, upstream: Upstream, subject: str, request_id: str
) -> dict[str, Any]:
    """Remove a user: revoke its gateway grants here now, and remove it upstream (retried until done)."""
    now = datetime.now(UTC)
    async with runtime.sessions() as session, session.begin():
        revoked = []
        for grant_id in await repository.live_grants_of_user(session, client.id, subject):
            revoked += await oauth_repository.revoke_subtree(session, grant_id, "user.removed", now)
        await audit.record(
            session,
            action="user.removed",
            actor=client.client_id,
            tenant_id=client.id,
            request_id=request_id,
            user_id=subject,
            detail={"gateway": upstream.mode, "revoked_grants": len(revoked)},
        )
        if revoked:
            await outbox.grants_revoked(session, runtime.ring, revoked, reason="user.removed", user_id=subject)
        key = "user_token" if subject.startswith("user-") else "user_id"
        call_id = await calls.enqueue(
            session,
            runtime.ring,
            tenant_id=client.id,
            operation="user_remove",
            payload={key: subject},
            request_id=request_id,
        )
    reply = await calls.attempt(runtime, call_id)
    if reply is not None and not reply.ok:
        raise reply.refused()
    return {"request_id": request_id}


def subject_of(user_id: str | None, user_token: str | None) -> str:
    """The user a removal names.

    Raises:
        MissingFields: neither ``user_id`` nor ``user_token``.
    """
    subject = user_id or user_token
    if not subject:
        raise errors.MissingFields("user_id or user_token is required")
    return subject
