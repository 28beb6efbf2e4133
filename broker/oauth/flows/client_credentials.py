"""``client_credentials`` (RFC 6749 §4.4): tokens for the client itself.

Plaid issues a refresh token here too (and its SDK requires one), although RFC 6749 §4.4.3 says a
refresh token SHOULD NOT be included; broker follows Plaid. The optional ``resource`` (RFC 8707) must
be the issuer or a configured resource, else ``invalid_target``; it becomes the token's ``aud``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker import errors, scopes
from broker.oauth.flows.base import Flow, IssuedTokens, NewGrant, TokenRequest, issue_grant, ttl

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime


class ClientCredentialsFlow(Flow):
    """Issue a pair to the authenticated client, scoped within its allowed scopes."""

    grant_type = "client_credentials"

    async def issue(self, session: AsyncSession, runtime: Runtime, request: TokenRequest) -> IssuedTokens:
        """See the module docstring."""
        client = request.client
        granted = scopes.narrow(scopes.parse(request.get("scope")), client.allowed_scopes, client.default_scopes)
        resource = request.get("resource")
        if resource is not None and resource not in runtime.settings.allowed_resources:
            raise errors.InvalidTarget("unknown resource")
        settings = runtime.settings
        new = NewGrant(
            kind="client_credentials",
            tenant_id=client.id,
            requester_tenant_id=client.id,
            holder_tenant_id=client.id,
            scopes=granted,
            audience=resource or client.client_id,
            resource=resource,
            access_token_ttl=ttl(client.access_token_ttl, settings.access_token_ttl),
            refresh_token_ttl=ttl(client.refresh_token_ttl, settings.refresh_token_ttl),
        )
        return await issue_grant(
            session, runtime, request, new, action="token.issued", detail={"grant_type": self.grant_type}
        )
