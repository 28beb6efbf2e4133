"""``/oauth/token``, ``/oauth/introspect``, ``/oauth/revoke`` and RFC 8414 metadata: parse, call, render."""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, Router, get, post

from broker import scopes
from broker.context import Runtime
from broker.gateway import access as gateway_access
from broker.gateway import tokens as gateway_tokens
from broker.gateway import upstreams
from broker.gateway.client import Upstream
from broker.http.auth import as_client, authenticate_client
from broker.http.deps import RuntimeDep, SessionDep
from broker.http.errors import NO_STORE, request_id_of
from broker.http.params import oauth_params, required
from broker.oauth import introspection, revocation, service
from broker.oauth.flows import client_credentials
from broker.oauth.flows.base import IssuedTokens
from broker.oauth.flows.token_exchange import SUBJECT_TOKEN_TYPES
from broker.oauth.introspection import Introspection
from broker.oauth.schemas import IntrospectionResponse, RevokeResponse, ServerMetadata, TokenResponse
from broker.observability import metrics
from broker.tenants.clients import AuthenticatedClient, StaleClient

AUTH_METHODS = ["client_secret_post", "client_secret_basic", "plaid_headers"]


@post("/oauth/token", status_code=200, media_type=MediaType.JSON)
async def token(request: Request[Any, Any, Any]) -> Response[TokenResponse]:
    return Response(await issue_tokens(request), headers=NO_STORE)


@post("/oauth/introspect", status_code=200, media_type=MediaType.JSON)
async def introspect(request: Request[Any, Any, Any]) -> Response[IntrospectionResponse]:
    return Response(await introspect_token(request), headers=NO_STORE)


async def issue_tokens(request: Request[Any, Any, Any]) -> TokenResponse:
    """``/oauth/token``: every grant type. Served by ``token`` and by the hot path (:mod:`broker.http.hot`)."""
    runtime: Runtime = request.app.state.runtime  # not injected: the hot paths skip dependency resolution
    params = await oauth_params(request, multi=frozenset({"audience"}))
    request_id = request_id_of(request)
    if service.is_client_credentials(params):

        async def issue(client: AuthenticatedClient) -> IssuedTokens:
            if client.upstream is not None:  # gateway mode (broker.gateway); local tenants pay one comparison
                return await gateway_tokens.issue_token(
                    runtime, client, await _upstream(runtime, client), params, request_id
                )
            return await client_credentials.issue(runtime, client, params, request_id)

        issued = await as_client(request, runtime, params, issue)
        metrics.TOKENS_ISSUED.inc(client_credentials.GRANT_TYPE)
    else:
        client = await authenticate_client(request, runtime, params)
        if client.upstream is not None:
            upstream = await upstreams.load(runtime, client)
            issued = await gateway_tokens.issue_token(runtime, client, upstream, params, request_id)
        else:
            issued = await service.issue_token(runtime, client, params, request_id)
        service.count_issued(params)
    return TokenResponse(
        access_token=issued.access_token,
        refresh_token=issued.refresh_token,
        token_type="Bearer",
        expires_in=issued.expires_in,
        scope=scopes.render(issued.scope),
        request_id=request_id,
        issued_token_type=issued.issued_token_type,
    )


async def introspect_token(request: Request[Any, Any, Any]) -> IntrospectionResponse:
    """``/oauth/introspect``. Served by ``introspect`` and by the hot path (:mod:`broker.http.hot`)."""
    runtime: Runtime = request.app.state.runtime
    params = await oauth_params(request)
    request_id = request_id_of(request)

    async def describe(client: AuthenticatedClient) -> Introspection | dict[str, Any] | None:
        if client.upstream is not None:  # the gateway re-checks a cached snapshot in its statement
            upstream = await upstreams.load(runtime, client)
            return await gateway_access.introspect(runtime, client, upstream, required(params, "token"), request_id)
        return await introspection.introspect(runtime, client, required(params, "token"), request_id)

    result = await as_client(request, runtime, params, describe)
    if isinstance(result, dict):
        return IntrospectionResponse(active=True, request_id=request_id, **result)
    if result is None:
        return IntrospectionResponse(active=False, request_id=request_id)
    return IntrospectionResponse(
        active=True,
        request_id=request_id,
        scope=result.scope,
        client_id=result.client_id,
        sub=result.sub,
        aud=result.aud,
        iss=result.iss,
        exp=result.exp,
        iat=result.iat,
        token_type=result.token_type,
        user_id=result.user_id,
    )


@post("/oauth/revoke", status_code=200, media_type=MediaType.JSON)
async def revoke(request: Request[Any, Any, Any], runtime: RuntimeDep, session: SessionDep) -> Response[RevokeResponse]:
    params = await oauth_params(request)
    client = await authenticate_client(request, runtime, params)
    request_id = request_id_of(request)
    if client.upstream is not None:
        await gateway_access.revoke(runtime, client, required(params, "token"), request_id)
    else:
        await revocation.revoke(session, runtime, client, required(params, "token"), request_id)
    return Response(RevokeResponse(request_id=request_id), headers=NO_STORE)


async def _upstream(runtime: Runtime, client: AuthenticatedClient) -> Upstream:
    """A gateway tenant's upstream, for a client authenticated from the database during this request.

    A cached snapshot is refused (``StaleClient``: ``as_client`` authenticates again from the database),
    so an upstream refusal is never re-checked by calling the upstream a second time.
    """
    if client.from_cache:
        raise StaleClient
    return await upstreams.load(runtime, client)


@get("/.well-known/oauth-authorization-server", sync_to_thread=False)
def metadata(runtime: RuntimeDep) -> ServerMetadata:
    issuer = runtime.settings.issuer.rstrip("/")
    return ServerMetadata(
        issuer=runtime.settings.issuer,
        token_endpoint=f"{issuer}/oauth/token",
        introspection_endpoint=f"{issuer}/oauth/introspect",
        revocation_endpoint=f"{issuer}/oauth/revoke",
        grant_types_supported=sorted(service.GRANT_TYPES),
        token_endpoint_auth_methods_supported=AUTH_METHODS,
        introspection_endpoint_auth_methods_supported=AUTH_METHODS,
        revocation_endpoint_auth_methods_supported=AUTH_METHODS,
        response_types_supported=[],
        scopes_supported=list(scopes.BUILTIN_SCOPES),
        subject_token_types_supported=sorted(set(SUBJECT_TOKEN_TYPES.values())),
        service_documentation=f"{issuer}/schema",
    )


router = Router(path="/", route_handlers=[token, introspect, revoke])
