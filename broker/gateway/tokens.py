"""``/oauth/token`` for a gateway tenant: local policy first, then the upstream, then the local record.

Every flow runs in three steps, and no database session is open during the upstream call:

1. a short transaction checks local policy exactly as issuer mode does (tenant status is checked by
   authentication; scopes narrow against the tenant and the audience policies; audiences must be
   allowed, all or nothing; subject tokens must be live and held by the caller). A refusal here never
   reaches the upstream;
2. the request goes upstream with the tenant's upstream credentials injected (:mod:`.client`);
   audiences are translated to the parties' identities there (see :func:`broker.gateway.exchange.translate_audiences`);
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

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from broker import errors, scopes
from broker.audit import service as audit
from broker.gateway import exchange, hot, refresh
from broker.gateway.record import (
    forward,
    gateway_detail,
    recorded_scopes,
)
from broker.oauth.flows.base import (
    TOKEN_EXCHANGE,
    IssuedTokens,
    TokenRequest,
    ttl,
)

if TYPE_CHECKING:
    from broker.context import Runtime
    from broker.gateway.client import Upstream
    from broker.tenants.clients import AuthenticatedClient

CLIENT_CREDENTIALS = "client_credentials"


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
    flow = {
        CLIENT_CREDENTIALS: _client_credentials,
        refresh.GRANT_TYPE: refresh.refresh,
        TOKEN_EXCHANGE: exchange.exchange,
    }.get(grant_type)
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
                **gateway_detail(upstream, exc.upstream_request_id),
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
    issued = await forward(runtime, upstream, body)
    return await hot.record_client_credentials(
        runtime,
        client,
        upstream,
        access_token=issued.access_token,
        upstream_refresh_token=issued.refresh_token,
        expires_in=issued.expires_in,
        scopes=recorded_scopes(issued.scope, granted),
        resource=resource,
        refresh_ttl=ttl(client.refresh_token_ttl, settings.refresh_token_ttl),
        request_id=request.request_id,
        upstream_request_id=issued.request_id,
        now=datetime.now(UTC),
    )
