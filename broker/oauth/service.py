"""The token endpoint's unit of work: pick the flow by ``grant_type`` and run it in one transaction.

The transaction commits before the route builds its response, so a token is never returned unless
it is durable (the trap of commit-on-response hooks that swallow a failed commit).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from broker import errors
from broker.oauth.flows import client_credentials, rotation
from broker.oauth.flows.base import TOKEN_EXCHANGE, DeferredFailure, Flow, IssuedTokens, TokenRequest
from broker.oauth.flows.refresh_token import RefreshTokenFlow
from broker.oauth.flows.token_exchange import SUBJECT_TOKEN_TYPES, TokenExchangeFlow
from broker.observability import metrics

if TYPE_CHECKING:
    from collections.abc import Mapping

    from broker.context import Runtime
    from broker.tenants.clients import AuthenticatedClient

FLOWS: Mapping[str, Flow] = {f.grant_type: f for f in (RefreshTokenFlow(), TokenExchangeFlow())}
"""The flows that run in an ORM session; ``client_credentials`` runs as one statement (its module)."""
GRANT_TYPES = (client_credentials.GRANT_TYPE, *FLOWS)


def count_issued(params: dict[str, list[str]]) -> None:
    """Count a successful ``issue_token`` in the metrics: by grant type, and exchanges by subject type."""
    grant_type = params["grant_type"][0]
    if grant_type == TOKEN_EXCHANGE:
        metrics.TOKENS_ISSUED.inc("token_exchange")
        subject = params.get("subject_token_type")
        kind = SUBJECT_TOKEN_TYPES.get(subject[0]) if subject else None
        metrics.EXCHANGES.inc(kind.removeprefix("urn:plaid:params:") if kind else "other")
    else:
        metrics.TOKENS_ISSUED.inc(grant_type if grant_type in FLOWS else "other")


def is_client_credentials(params: dict[str, list[str]]) -> bool:
    """Whether the request asks for ``client_credentials`` (served by ``oauth.fastpath``)."""
    values = params.get("grant_type")
    return values is not None and len(values) > 0 and values[0] == client_credentials.GRANT_TYPE


async def issue_token(
    runtime: Runtime, client: AuthenticatedClient, params: dict[str, list[str]], request_id: str
) -> IssuedTokens:
    """Run the flow named by ``grant_type`` for an authenticated client in one transaction, and commit.

    Raises:
        InvalidRequest: ``grant_type`` is missing.
        UnsupportedGrantType: ``grant_type`` is not one broker supports.
        OAuthError: whatever the flow refuses.
    """
    values = params.get("grant_type")
    if not values:
        raise errors.InvalidRequest("missing required parameter 'grant_type'")
    if values[0] == client_credentials.GRANT_TYPE:
        return await client_credentials.issue(runtime, client, params, request_id)
    if values[0] == RefreshTokenFlow.grant_type:
        rotated = await rotation.try_rotate(runtime, client, params, request_id)
        if rotated is not None:
            return rotated
    flow = FLOWS.get(values[0])
    if flow is None:
        raise errors.UnsupportedGrantType("unsupported grant_type")
    request = TokenRequest(client=client, params=params, request_id=request_id, now=datetime.now(UTC))
    deferred: errors.BrokerError | None = None
    async with runtime.sessions() as session, session.begin():
        try:
            issued = await flow.issue(session, runtime, request)
        except DeferredFailure as failure:
            deferred = failure.error
    if deferred is not None:
        raise deferred
    return issued
