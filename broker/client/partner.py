"""The OAuth calls a partner (or any client) makes with its own credentials: refresh, introspect, revoke.

Credentials travel in Plaid's ``PLAID-CLIENT-ID`` / ``PLAID-SECRET`` headers, bodies as JSON, exactly as
Plaid's SDKs do. A multi-party token shared with you is used with *your* credentials: refreshing it
gives you your own rotating lineage (keep the new refresh token each time), and revoking it withdraws
only your share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx

from broker.client._core import DEFAULT_TIMEOUT, Call, finish, ignore, scope_text
from broker.client.models import Introspection, TokenResponse

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

T = TypeVar("T")
EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"


class _PartnerCalls:
    def __init__(self, base_url: str, client_id: str, secret: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self._headers = {"PLAID-CLIENT-ID": client_id, "PLAID-SECRET": secret}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, client_id={self.client_id!r}, secret=***)"

    @staticmethod
    def _token(**params: Any) -> Call[TokenResponse]:  # noqa: ANN401
        body = {k: v for k, v in params.items() if v is not None}
        return Call("POST", "/oauth/token", TokenResponse.from_json, json=body)

    def _refresh(self, refresh_token: str, scope: str | Iterable[str] | None) -> Call[TokenResponse]:
        return self._token(grant_type="refresh_token", refresh_token=refresh_token, scope=scope_text(scope))

    def _introspect(self, token: str) -> Call[Introspection]:
        return Call("POST", "/oauth/introspect", Introspection.from_json, json={"token": token})

    def _revoke(self, token: str) -> Call[None]:
        return Call("POST", "/oauth/revoke", ignore, json={"token": token})


class PartnerClient(_PartnerCalls):
    """Synchronous OAuth client for one set of credentials.

    Example:
        >>> with PartnerClient("https://broker.example", client_id, secret) as partner:  # doctest: +SKIP
        ...     pair = partner.refresh(shared_refresh_token)
        ...     info = partner.introspect(pair.access_token)
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        secret: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        """Talk to broker at ``base_url`` as ``client_id``; pass ``http`` to reuse your own httpx client."""
        super().__init__(base_url, client_id, secret)
        self._owned = http is None
        self._http = http or httpx.Client(timeout=timeout)

    def _run(self, call: Call[T]) -> T:
        response = self._http.request(
            call.method, self.base_url + call.path, json=call.json, params=call.params, headers=self._headers
        )
        return finish(call, response)

    def refresh(self, refresh_token: str, *, scope: str | Iterable[str] | None = None) -> TokenResponse:
        """Use a refresh token (``grant_type=refresh_token``).

        For a multi-party token shared with you this forks your own lineage: the answer's refresh token
        is yours and rotates on each use; the shared token stays usable by the other parties.

        Raises:
            BrokerAPIError: e.g. ``invalid_grant`` when revoked, expired, replayed or not yours.
        """
        return self._run(self._refresh(refresh_token, scope))

    def token(self, grant_type: str, **params: Any) -> TokenResponse:  # noqa: ANN401
        """Any token request (``client_credentials``, token exchange...); ``None`` values are left out."""
        return self._run(self._token(grant_type=grant_type, **params))

    def introspect(self, token: str) -> Introspection:
        """RFC 7662 introspection; ``active`` is False for tokens that are not active *for you*."""
        return self._run(self._introspect(token))

    def revoke(self, token: str) -> None:
        """RFC 7009 revocation. On a shared multi-party token this withdraws only your share."""
        self._run(self._revoke(token))

    def close(self) -> None:
        """Close the HTTP client (if this object created it)."""
        if self._owned:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncPartnerClient(_PartnerCalls):
    """Asynchronous twin of :class:`PartnerClient` (same methods, awaited)."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        secret: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        """Talk to broker at ``base_url`` as ``client_id``; pass ``http`` to reuse your own httpx client."""
        super().__init__(base_url, client_id, secret)
        self._owned = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)

    async def _run(self, call: Call[T]) -> T:
        response = await self._http.request(
            call.method, self.base_url + call.path, json=call.json, params=call.params, headers=self._headers
        )
        return finish(call, response)

    async def refresh(self, refresh_token: str, *, scope: str | Iterable[str] | None = None) -> TokenResponse:
        """See :meth:`PartnerClient.refresh`."""
        return await self._run(self._refresh(refresh_token, scope))

    async def token(self, grant_type: str, **params: Any) -> TokenResponse:  # noqa: ANN401
        """See :meth:`PartnerClient.token`."""
        return await self._run(self._token(grant_type=grant_type, **params))

    async def introspect(self, token: str) -> Introspection:
        """See :meth:`PartnerClient.introspect`."""
        return await self._run(self._introspect(token))

    async def revoke(self, token: str) -> None:
        """See :meth:`PartnerClient.revoke`."""
        await self._run(self._revoke(token))

    async def aclose(self) -> None:
        """Close the HTTP client (if this object created it)."""
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
