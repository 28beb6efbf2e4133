"""The token endpoint's unit of work: pick the flow by ``grant_type`` and run it in one transaction.

The transaction commits before the route builds its response, so a token is never returned unless
it is durable (the trap of commit-on-response hooks that swallow a failed commit).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from broker import errors
from broker.oauth.flows.base import DeferredFailure, Flow, IssuedTokens, TokenRequest
from broker.oauth.flows.client_credentials import ClientCredentialsFlow
from broker.oauth.flows.refresh_token import RefreshTokenFlow
from broker.oauth.flows.token_exchange import TokenExchangeFlow

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.db.models import Tenant

FLOWS: Mapping[str, Flow] = {
    f.grant_type: f for f in (ClientCredentialsFlow(), RefreshTokenFlow(), TokenExchangeFlow())
}


async def issue_token(
    session: AsyncSession, runtime: Runtime, client: Tenant, params: dict[str, list[str]], request_id: str
) -> IssuedTokens:
    """Run the flow named by ``grant_type`` for an authenticated client and commit.

    Raises:
        InvalidRequest: ``grant_type`` is missing.
        UnsupportedGrantType: ``grant_type`` is not one broker supports.
        OAuthError: whatever the flow refuses.
    """
    values = params.get("grant_type")
    if not values:
        raise errors.InvalidRequest("missing required parameter 'grant_type'")
    flow = FLOWS.get(values[0])
    if flow is None:
        raise errors.UnsupportedGrantType("unsupported grant_type")
    request = TokenRequest(client=client, params=params, request_id=request_id, now=datetime.now(UTC))
    deferred: errors.BrokerError | None = None
    async with session.begin():
        try:
            issued = await flow.issue(session, runtime, request)
        except DeferredFailure as failure:
            deferred = failure.error
    if deferred is not None:
        raise deferred
    return issued
