"""Token exchange (RFC 8693) with Plaid's three subject token types.

* ``urn:plaid:params:tokens:user``: the subject is a user (``user_id`` or ``user_token``) of the
  caller; the audience must be the caller itself. Produces a ``user`` grant held by the caller.
* ``urn:plaid:params:oauth:user-token``: the subject is a current refresh token held by the caller
  whose grant carries the ``exchange`` scope; the audience is one other client that a policy lets the
  caller target. Produces an ``exchange`` grant, child of the subject's grant, held by that client.
* ``urn:plaid:params:credit:multi-user``: the subject is a user of the caller; the audience is a list of
  client ids and CRA-partner URNs, all allowed by policy (all or nothing). Produces a ``multi_party``
  grant whose parties are the listed clients and every partner client mapped to a listed URN; the
  requester is a party only if listed.

Errors (RFC 8693 §2.2.2): a bad subject token is ``invalid_request``; a refused audience is
``invalid_target``. Scope only narrows; lifetimes come from the audience policy, then the tenant,
then the global default. Tokens for other parties (``oauth:user-token``, ``credit:multi-user``) never
carry ``exchange`` by default: the requester must ask for it, so partners cannot re-share by accident.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from broker import errors, scopes
from broker.audiences import service as audiences
from broker.crypto import tokens
from broker.oauth import repository
from broker.oauth.audience import parse_audiences
from broker.oauth.flows.base import (
    ACCESS_TOKEN_TYPE,
    REFRESH_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    Flow,
    IssuedTokens,
    NewGrant,
    TokenRequest,
    grant_is_live,
    issue_grant,
    ttl,
)
from broker.users import service as users
from broker.webhooks import outbox

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from broker.context import Runtime
    from broker.db.models import User

USER = "urn:plaid:params:tokens:user"
OAUTH_USER_TOKEN = "urn:plaid:params:oauth:user-token"
MULTI_USER = "urn:plaid:params:credit:multi-user"
SUBJECT_TOKEN_TYPES: dict[str, str] = {
    USER: USER,
    OAUTH_USER_TOKEN: OAUTH_USER_TOKEN,
    MULTI_USER: MULTI_USER,
    # Spellings from earlier versions of Plaid's spec (2025-05 to 2025-07).
    "urn:plaid:params:tokensdb::user-token": USER,
    "urn:plaid:params:tokensdb:user-token": USER,
    "urn:plaid:params:oauth::user-token": OAUTH_USER_TOKEN,
}


class TokenExchangeFlow(Flow):
    """RFC 8693 token exchange, dispatched on ``subject_token_type``."""

    grant_type = TOKEN_EXCHANGE

    async def issue(self, session: AsyncSession, runtime: Runtime, request: TokenRequest) -> IssuedTokens:
        """See the module docstring."""
        subject_type, subject_token = exchange_subject(request)
        if request.get("resource") is not None and request.get("resource") not in runtime.settings.allowed_resources:
            raise errors.InvalidTarget("unknown resource")
        if subject_type == USER:
            return await self._user(session, runtime, request, subject_token)
        if subject_type == OAUTH_USER_TOKEN:
            return await self._oauth_user_token(session, runtime, request, subject_token)
        return await self._multi_user(session, runtime, request, subject_token)

    async def _subject_user(self, session: AsyncSession, runtime: Runtime, request: TokenRequest, value: str) -> User:
        user = await users.find_subject(session, runtime.ring, request.client.id, value)
        if user is None:
            raise errors.InvalidRequest("invalid subject_token", debug="no live user of this client matches")
        return user

    async def _user(
        self, session: AsyncSession, runtime: Runtime, request: TokenRequest, subject_token: str
    ) -> IssuedTokens:
        client = request.client
        entries = parse_audiences(request.params.get("audience", [client.client_id]))
        if entries != [client.client_id]:
            raise errors.InvalidTarget("the audience must be the calling client for this subject_token_type")
        user = await self._subject_user(session, runtime, request, subject_token)
        granted = scopes.narrow(scopes.parse(request.get("scope")), client.allowed_scopes, client.default_scopes)
        settings = runtime.settings
        new = NewGrant(
            kind="user",
            tenant_id=client.id,
            requester_tenant_id=client.id,
            holder_tenant_id=client.id,
            user_pk=user.id,
            scopes=granted,
            audience=client.client_id,
            resource=request.get("resource"),
            subject_token_type=USER,
            access_token_ttl=ttl(client.access_token_ttl, settings.access_token_ttl),
            refresh_token_ttl=ttl(client.refresh_token_ttl, settings.refresh_token_ttl),
        )
        return await self._finish(session, runtime, request, new, user_id=user.user_id, parties=())

    async def _oauth_user_token(
        self, session: AsyncSession, runtime: Runtime, request: TokenRequest, subject_token: str
    ) -> IssuedTokens:
        client = request.client
        row = await repository.refresh_by_digest(session, tokens.digest(runtime.ring.hash_key, subject_token))
        if row is None:
            raise errors.InvalidRequest("invalid subject_token", debug="unknown refresh token")
        token, subject_grant, ancestor_revoked = row.RefreshToken, row.Grant, bool(row.ancestor_revoked)
        if subject_grant.holder_tenant_id != client.id or row.gateway:
            raise errors.InvalidRequest("invalid subject_token", debug="subject token not held by the caller")
        if (
            not grant_is_live(subject_grant, ancestor_revoked)
            or token.revoked_at is not None
            or token.rotated_at is not None
            or token.expires_at <= request.now
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
        allowed = _intersect(subject_grant.scopes, target.allowed_scopes)
        granted = scopes.narrow(scopes.parse(request.get("scope")), allowed, _without_exchange(allowed))
        settings = runtime.settings
        new = NewGrant(
            kind="exchange",
            tenant_id=subject_grant.tenant_id,
            requester_tenant_id=client.id,
            holder_tenant_id=target.partner_tenant_ids[0],
            parent=subject_grant,
            user_pk=subject_grant.user_pk,
            scopes=granted,
            audience=target.entry,
            resource=request.get("resource"),
            subject_token_type=OAUTH_USER_TOKEN,
            access_token_ttl=ttl(target.access_token_ttl, client.access_token_ttl, settings.access_token_ttl),
            refresh_token_ttl=ttl(target.refresh_token_ttl, client.refresh_token_ttl, settings.refresh_token_ttl),
        )
        holder = target.partner_tenant_ids[0]
        include = frozenset({holder}) if target.webhook_include_refresh_token else frozenset()
        notify = ((holder, target.entry),)
        return await self._finish(
            session, runtime, request, new, user_id=None, parties=(), notify=notify, include_token_for=include
        )

    async def _multi_user(
        self, session: AsyncSession, runtime: Runtime, request: TokenRequest, subject_token: str
    ) -> IssuedTokens:
        client = request.client
        entries = parse_audiences(request.params.get("audience", []))
        targets = await audiences.resolve_targets(session, client.id, entries)
        user = await self._subject_user(session, runtime, request, subject_token)
        allowed: tuple[str, ...] = tuple(client.allowed_scopes)
        for target in targets:
            allowed = _intersect(allowed, target.allowed_scopes)
        default = _without_exchange(tuple(s for s in client.default_scopes if s in allowed))
        granted = scopes.narrow(scopes.parse(request.get("scope")), allowed, default)
        parties: dict[Any, str] = {}
        for target in targets:
            for tenant_id in target.partner_tenant_ids:
                parties.setdefault(tenant_id, target.entry)
        settings = runtime.settings
        access_ttls = [t.access_token_ttl for t in targets if t.access_token_ttl is not None]
        refresh_ttls = [t.refresh_token_ttl for t in targets if t.refresh_token_ttl is not None]
        new = NewGrant(
            kind="multi_party",
            tenant_id=client.id,
            requester_tenant_id=client.id,
            holder_tenant_id=None,
            user_pk=user.id,
            scopes=granted,
            audience=",".join(entries),
            resource=request.get("resource"),
            subject_token_type=MULTI_USER,
            access_token_ttl=ttl(min(access_ttls, default=None), client.access_token_ttl, settings.access_token_ttl),
            refresh_token_ttl=ttl(
                min(refresh_ttls, default=None), client.refresh_token_ttl, settings.refresh_token_ttl
            ),
        )
        include = frozenset(
            t for target in targets if target.webhook_include_refresh_token for t in target.partner_tenant_ids
        )
        return await self._finish(
            session,
            runtime,
            request,
            new,
            user_id=user.user_id,
            parties=tuple(parties.items()),
            notify=tuple(parties.items()),
            include_token_for=include,
        )

    async def _finish(
        self,
        session: AsyncSession,
        runtime: Runtime,
        request: TokenRequest,
        new: NewGrant,
        *,
        user_id: str | None,
        parties: tuple[tuple[Any, str], ...],
        notify: tuple[tuple[Any, str], ...] = (),
        include_token_for: frozenset[Any] = frozenset(),
    ) -> IssuedTokens:
        """Issue the grant and, in the same transaction, queue ``grant.shared`` for each ``notify`` tenant."""
        detail = {
            "subject_token_type": new.subject_token_type,
            "audience": new.audience,
            "parties": len(parties),
            "parent_grant_id": str(new.parent.id) if new.parent is not None else None,
        }
        issued = await issue_grant(
            session,
            runtime,
            request,
            new,
            action="token.exchanged",
            detail=detail,
            parties=parties,
            user_id=user_id,
            issued_token_type=ACCESS_TOKEN_TYPE,
        )
        if notify:
            await outbox.grant_shared(
                session,
                runtime.ring,
                grant_id=issued.grant_id,
                owner_tenant_id=new.tenant_id,
                kind=new.kind,
                requester=request.client.client_id,
                audience=new.audience,
                scope=new.scopes,
                user_id=user_id,
                parties=notify,
                refresh_token=issued.refresh_token,
                refresh_token_expires_at=request.now + timedelta(seconds=new.refresh_token_ttl),
                include_token_for=include_token_for,
            )
        return issued


def _without_exchange(scopes_: tuple[str, ...]) -> tuple[str, ...]:
    """Default scope of a token handed to another party: never ``exchange`` unless asked for.

    A party holding ``exchange`` could pass the consumer's data on again with an
    ``oauth:user-token`` exchange; least privilege says the sharer must request that explicitly.
    """
    return tuple(s for s in scopes_ if s != scopes.EXCHANGE)


def _intersect(scopes_: Any, allowed: tuple[str, ...] | None) -> tuple[str, ...]:  # noqa: ANN401
    if allowed is None:
        return tuple(scopes_)
    return tuple(s for s in scopes_ if s in allowed)


def exchange_subject(request: TokenRequest) -> tuple[str, str]:
    """The subject token type (canonical URN) and subject token of an RFC 8693 request, validated.

    Shared by issuer mode and the gateway. RFC 8693 §2.1: ``subject_token`` and ``subject_token_type``
    are required; delegation (``actor_token``) is refused; ``requested_token_type`` must be one broker issues.

    Raises:
        InvalidRequest: a required parameter is missing, or a type is unsupported.
    """
    subject_type = SUBJECT_TOKEN_TYPES.get(request.require("subject_token_type"))
    if subject_type is None:
        raise errors.InvalidRequest("unsupported subject_token_type")
    subject_token = request.require("subject_token")
    if request.get("actor_token") is not None or request.get("actor_token_type") is not None:
        raise errors.InvalidRequest("delegation (actor_token) is not supported")
    requested_type = request.get("requested_token_type")
    if requested_type is not None and requested_type not in {ACCESS_TOKEN_TYPE, REFRESH_TOKEN_TYPE}:
        raise errors.InvalidRequest("unsupported requested_token_type")
    return subject_type, subject_token
