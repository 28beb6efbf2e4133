"""The admin API (``/admin/v1``) for operators: webhook endpoints and deliveries, tenants, audiences, policies.

Authenticate with an admin API key (``broker admin create-key``); a ``read`` key may only list and get.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx

from broker.client._core import DEFAULT_TIMEOUT, Call, finish, ignore, segment
from broker.client.models import Audience, DeliveryPage, Policy, Tenant, WebhookDelivery, WebhookEndpoint

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

T = TypeVar("T")
PREFIX = "/admin/v1"


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _endpoints(data: Any) -> list[WebhookEndpoint]:  # noqa: ANN401 - JSON
    return [WebhookEndpoint.from_json(item) for item in data["data"]]


def _count(data: Any) -> int:  # noqa: ANN401 - JSON
    return int(data["redelivered"])


def _identity(data: Any) -> Any:  # noqa: ANN401 - JSON
    return data


class _AdminCalls:
    def __init__(self, base_url: str, admin_key: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {admin_key}"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, admin_key=***)"

    # webhook endpoints
    @staticmethod
    def _create_endpoint(
        url: str,
        *,
        client_id: str | None,
        audience: str | None,
        events: Iterable[str] | None,
        enabled: bool,
        description: str | None,
    ) -> Call[WebhookEndpoint]:
        body = _drop_none(
            {
                "url": url,
                "client_id": client_id,
                "audience": audience,
                "events": list(events) if events is not None else None,
                "description": description,
            }
        )
        body["enabled"] = enabled
        return Call("POST", f"{PREFIX}/webhook-endpoints", WebhookEndpoint.from_json, json=body)

    @staticmethod
    def _list_endpoints(client_id: str | None, audience: str | None) -> Call[list[WebhookEndpoint]]:
        params = _drop_none({"client_id": client_id, "audience": audience})
        return Call("GET", f"{PREFIX}/webhook-endpoints", _endpoints, params=params)

    @staticmethod
    def _endpoint_path(endpoint_id: str, suffix: str = "") -> str:
        return f"{PREFIX}/webhook-endpoints/{segment(endpoint_id)}{suffix}"

    @staticmethod
    def _update_endpoint(
        endpoint_id: str,
        *,
        url: str | None,
        events: Iterable[str] | None,
        enabled: bool | None,
        description: str | None,
        clear_description: bool,
    ) -> Call[WebhookEndpoint]:
        body = _drop_none(
            {
                "url": url,
                "events": list(events) if events is not None else None,
                "enabled": enabled,
                "description": description,
            }
        )
        if clear_description:
            body["description"] = None
        path = f"{PREFIX}/webhook-endpoints/{segment(endpoint_id)}"
        return Call("PATCH", path, WebhookEndpoint.from_json, json=body)

    @staticmethod
    def _deliveries(
        *,
        status: str | None,
        endpoint_id: str | None,
        event_type: str | None,
        event_id: str | None,
        limit: int | None,
        after: str | None,
    ) -> Call[DeliveryPage]:
        params = _drop_none(
            {
                "status": status,
                "endpoint_id": endpoint_id,
                "event_type": event_type,
                "event_id": event_id,
                "limit": str(limit) if limit is not None else None,
                "after": after,
            }
        )
        return Call("GET", f"{PREFIX}/webhook-deliveries", DeliveryPage.from_json, params=params)

    @staticmethod
    def _policy(
        client_id: str,
        target: str,
        *,
        allowed_scopes: Iterable[str] | None,
        access_token_ttl: int | None,
        refresh_token_ttl: int | None,
        webhook_include_refresh_token: bool,
    ) -> Call[Policy]:
        body = _drop_none(
            {
                "target": target,
                "allowed_scopes": list(allowed_scopes) if allowed_scopes is not None else None,
                "access_token_ttl": access_token_ttl,
                "refresh_token_ttl": refresh_token_ttl,
            }
        )
        body["webhook_include_refresh_token"] = webhook_include_refresh_token
        return Call("PUT", f"{PREFIX}/tenants/{segment(client_id)}/policies", Policy.from_json, json=body)

    @staticmethod
    def _create_tenant(
        name: str, *, kind: str, allowed_scopes: Iterable[str] | None, default_scopes: Iterable[str] | None
    ) -> Call[Tenant]:
        body = _drop_none(
            {
                "name": name,
                "kind": kind,
                "allowed_scopes": list(allowed_scopes) if allowed_scopes is not None else None,
                "default_scopes": list(default_scopes) if default_scopes is not None else None,
            }
        )
        return Call("POST", f"{PREFIX}/tenants", Tenant.from_json, json=body)


class AdminClient(_AdminCalls):
    """Synchronous admin API client.

    Example:
        >>> with AdminClient("https://broker.example", admin_key) as admin:  # doctest: +SKIP
        ...     endpoint = admin.create_webhook_endpoint("https://partner.example/hooks", client_id=partner_id)
        ...     print(endpoint.secret)  # shown once: hand it to the partner
    """

    def __init__(
        self, base_url: str, admin_key: str, *, timeout: float = DEFAULT_TIMEOUT, http: httpx.Client | None = None
    ) -> None:
        """Talk to broker at ``base_url`` with ``admin_key``; pass ``http`` to reuse your own httpx client."""
        super().__init__(base_url, admin_key)
        self._owned = http is None
        self._http = http or httpx.Client(timeout=timeout)

    def _run(self, call: Call[T]) -> T:
        response = self._http.request(
            call.method, self.base_url + call.path, json=call.json, params=call.params, headers=self._headers
        )
        return finish(call, response)

    def request(self, method: str, path: str, *, json: dict[str, Any] | None = None) -> Any:  # noqa: ANN401
        """Any admin call (``path`` below ``/admin/v1``); returns the decoded JSON."""
        return self._run(Call(method, PREFIX + path, _identity, json=json))

    def create_webhook_endpoint(
        self,
        url: str,
        *,
        client_id: str | None = None,
        audience: str | None = None,
        events: Iterable[str] | None = None,
        enabled: bool = True,
        description: str | None = None,
    ) -> WebhookEndpoint:
        """Register an endpoint for a partner client or an audience; ``.secret`` is shown only here.

        Raises:
            BrokerAPIError: ``validation_failed`` (bad URL, unknown owner or event), ``conflict`` (too many).
        """
        return self._run(
            self._create_endpoint(
                url, client_id=client_id, audience=audience, events=events, enabled=enabled, description=description
            )
        )

    def list_webhook_endpoints(
        self, *, client_id: str | None = None, audience: str | None = None
    ) -> list[WebhookEndpoint]:
        """Every endpoint, or those of one client or audience."""
        return self._run(self._list_endpoints(client_id, audience))

    def get_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        """One endpoint."""
        return self._run(Call("GET", self._endpoint_path(endpoint_id), WebhookEndpoint.from_json))

    def update_webhook_endpoint(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        events: Iterable[str] | None = None,
        enabled: bool | None = None,
        description: str | None = None,
        clear_description: bool = False,
    ) -> WebhookEndpoint:
        """Change what is given (``enabled=False`` pauses delivery; pending events wait)."""
        return self._run(
            self._update_endpoint(
                endpoint_id,
                url=url,
                events=events,
                enabled=enabled,
                description=description,
                clear_description=clear_description,
            )
        )

    def rotate_webhook_secret(self, endpoint_id: str, *, overlap_seconds: int = 86_400) -> WebhookEndpoint:
        """A new signing secret (in ``.secret``); the old one keeps signing for ``overlap_seconds``."""
        path = self._endpoint_path(endpoint_id, "/rotate-secret")
        return self._run(Call("POST", path, WebhookEndpoint.from_json, json={"overlap_seconds": overlap_seconds}))

    def delete_webhook_endpoint(self, endpoint_id: str) -> None:
        """Delete an endpoint and its delivery log."""
        self._run(Call("DELETE", self._endpoint_path(endpoint_id), ignore))

    def send_test_webhook(self, endpoint_id: str) -> WebhookDelivery:
        """Queue a ``webhook.test`` event for the endpoint."""
        return self._run(Call("POST", self._endpoint_path(endpoint_id, "/test"), WebhookDelivery.from_json))

    def list_webhook_deliveries(
        self,
        *,
        status: str | None = None,
        endpoint_id: str | None = None,
        event_type: str | None = None,
        event_id: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> DeliveryPage:
        """Deliveries, newest first, filtered (``status``: ``pending``, ``delivered`` or ``dead``)."""
        return self._run(
            self._deliveries(
                status=status,
                endpoint_id=endpoint_id,
                event_type=event_type,
                event_id=event_id,
                limit=limit,
                after=after,
            )
        )

    def get_webhook_delivery(self, delivery_id: str) -> WebhookDelivery:
        """One delivery with its attempts."""
        path = f"{PREFIX}/webhook-deliveries/{segment(delivery_id)}"
        return self._run(Call("GET", path, WebhookDelivery.from_json))

    def redeliver_webhook(self, delivery_id: str) -> WebhookDelivery:
        """Send a delivery again now (same event id, fresh retry budget)."""
        path = f"{PREFIX}/webhook-deliveries/{segment(delivery_id)}/redeliver"
        return self._run(Call("POST", path, WebhookDelivery.from_json))

    def redeliver_dead_webhooks(self, *, endpoint_id: str | None = None) -> int:
        """Requeue every dead-lettered delivery (of one endpoint, or all); returns how many."""
        body = _drop_none({"endpoint_id": endpoint_id})
        return self._run(Call("POST", f"{PREFIX}/webhook-deliveries/redeliver-dead", _count, json=body))

    def create_tenant(
        self,
        name: str,
        *,
        kind: str = "customer",
        allowed_scopes: Iterable[str] | None = None,
        default_scopes: Iterable[str] | None = None,
    ) -> Tenant:
        """Create a client (``kind`` ``customer`` or ``partner``); ``.secret`` is shown only here."""
        return self._run(
            self._create_tenant(name, kind=kind, allowed_scopes=allowed_scopes, default_scopes=default_scopes)
        )

    def get_tenant(self, client_id: str) -> Tenant:
        """One client."""
        return self._run(Call("GET", f"{PREFIX}/tenants/{segment(client_id)}", Tenant.from_json))

    def create_audience(self, urn: str, display_name: str) -> Audience:
        """Register an audience URN."""
        body = {"urn": urn, "display_name": display_name}
        return self._run(Call("POST", f"{PREFIX}/audiences", Audience.from_json, json=body))

    def add_audience_member(self, urn: str, client_id: str) -> Audience:
        """Make a partner client act for an audience."""
        path = f"{PREFIX}/audiences/{segment(urn)}/members/{segment(client_id)}"
        return self._run(Call("PUT", path, Audience.from_json))

    def put_policy(
        self,
        client_id: str,
        target: str,
        *,
        allowed_scopes: Iterable[str] | None = None,
        access_token_ttl: int | None = None,
        refresh_token_ttl: int | None = None,
        webhook_include_refresh_token: bool = False,
    ) -> Policy:
        """Let ``client_id`` exchange toward ``target`` (an audience URN or a client id)."""
        return self._run(
            self._policy(
                client_id,
                target,
                allowed_scopes=allowed_scopes,
                access_token_ttl=access_token_ttl,
                refresh_token_ttl=refresh_token_ttl,
                webhook_include_refresh_token=webhook_include_refresh_token,
            )
        )

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


class AsyncAdminClient(_AdminCalls):
    """Asynchronous twin of :class:`AdminClient` (same methods, awaited)."""

    def __init__(
        self,
        base_url: str,
        admin_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        """Talk to broker at ``base_url`` with ``admin_key``; pass ``http`` to reuse your own httpx client."""
        super().__init__(base_url, admin_key)
        self._owned = http is None
        self._http = http or httpx.AsyncClient(timeout=timeout)

    async def _run(self, call: Call[T]) -> T:
        response = await self._http.request(
            call.method, self.base_url + call.path, json=call.json, params=call.params, headers=self._headers
        )
        return finish(call, response)

    async def request(self, method: str, path: str, *, json: dict[str, Any] | None = None) -> Any:  # noqa: ANN401
        """See :meth:`AdminClient.request`."""
        return await self._run(Call(method, PREFIX + path, _identity, json=json))

    async def create_webhook_endpoint(
        self,
        url: str,
        *,
        client_id: str | None = None,
        audience: str | None = None,
        events: Iterable[str] | None = None,
        enabled: bool = True,
        description: str | None = None,
    ) -> WebhookEndpoint:
        """See :meth:`AdminClient.create_webhook_endpoint`."""
        return await self._run(
            self._create_endpoint(
                url, client_id=client_id, audience=audience, events=events, enabled=enabled, description=description
            )
        )

    async def list_webhook_endpoints(
        self, *, client_id: str | None = None, audience: str | None = None
    ) -> list[WebhookEndpoint]:
        """See :meth:`AdminClient.list_webhook_endpoints`."""
        return await self._run(self._list_endpoints(client_id, audience))

    async def get_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        """See :meth:`AdminClient.get_webhook_endpoint`."""
        return await self._run(Call("GET", self._endpoint_path(endpoint_id), WebhookEndpoint.from_json))

    async def update_webhook_endpoint(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        events: Iterable[str] | None = None,
        enabled: bool | None = None,
        description: str | None = None,
        clear_description: bool = False,
    ) -> WebhookEndpoint:
        """See :meth:`AdminClient.update_webhook_endpoint`."""
        return await self._run(
            self._update_endpoint(
                endpoint_id,
                url=url,
                events=events,
                enabled=enabled,
                description=description,
                clear_description=clear_description,
            )
        )

    async def rotate_webhook_secret(self, endpoint_id: str, *, overlap_seconds: int = 86_400) -> WebhookEndpoint:
        """See :meth:`AdminClient.rotate_webhook_secret`."""
        path = self._endpoint_path(endpoint_id, "/rotate-secret")
        body = {"overlap_seconds": overlap_seconds}
        return await self._run(Call("POST", path, WebhookEndpoint.from_json, json=body))

    async def delete_webhook_endpoint(self, endpoint_id: str) -> None:
        """See :meth:`AdminClient.delete_webhook_endpoint`."""
        await self._run(Call("DELETE", self._endpoint_path(endpoint_id), ignore))

    async def send_test_webhook(self, endpoint_id: str) -> WebhookDelivery:
        """See :meth:`AdminClient.send_test_webhook`."""
        return await self._run(Call("POST", self._endpoint_path(endpoint_id, "/test"), WebhookDelivery.from_json))

    async def list_webhook_deliveries(
        self,
        *,
        status: str | None = None,
        endpoint_id: str | None = None,
        event_type: str | None = None,
        event_id: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> DeliveryPage:
        """See :meth:`AdminClient.list_webhook_deliveries`."""
        return await self._run(
            self._deliveries(
                status=status,
                endpoint_id=endpoint_id,
                event_type=event_type,
                event_id=event_id,
                limit=limit,
                after=after,
            )
        )

    async def get_webhook_delivery(self, delivery_id: str) -> WebhookDelivery:
        """See :meth:`AdminClient.get_webhook_delivery`."""
        path = f"{PREFIX}/webhook-deliveries/{segment(delivery_id)}"
        return await self._run(Call("GET", path, WebhookDelivery.from_json))

    async def redeliver_webhook(self, delivery_id: str) -> WebhookDelivery:
        """See :meth:`AdminClient.redeliver_webhook`."""
        path = f"{PREFIX}/webhook-deliveries/{segment(delivery_id)}/redeliver"
        return await self._run(Call("POST", path, WebhookDelivery.from_json))

    async def redeliver_dead_webhooks(self, *, endpoint_id: str | None = None) -> int:
        """See :meth:`AdminClient.redeliver_dead_webhooks`."""
        body = _drop_none({"endpoint_id": endpoint_id})
        return await self._run(Call("POST", f"{PREFIX}/webhook-deliveries/redeliver-dead", _count, json=body))

    async def create_tenant(
        self,
        name: str,
        *,
        kind: str = "customer",
        allowed_scopes: Iterable[str] | None = None,
        default_scopes: Iterable[str] | None = None,
    ) -> Tenant:
        """See :meth:`AdminClient.create_tenant`."""
        return await self._run(
            self._create_tenant(name, kind=kind, allowed_scopes=allowed_scopes, default_scopes=default_scopes)
        )

    async def get_tenant(self, client_id: str) -> Tenant:
        """See :meth:`AdminClient.get_tenant`."""
        return await self._run(Call("GET", f"{PREFIX}/tenants/{segment(client_id)}", Tenant.from_json))

    async def create_audience(self, urn: str, display_name: str) -> Audience:
        """See :meth:`AdminClient.create_audience`."""
        body = {"urn": urn, "display_name": display_name}
        return await self._run(Call("POST", f"{PREFIX}/audiences", Audience.from_json, json=body))

    async def add_audience_member(self, urn: str, client_id: str) -> Audience:
        """See :meth:`AdminClient.add_audience_member`."""
        path = f"{PREFIX}/audiences/{segment(urn)}/members/{segment(client_id)}"
        return await self._run(Call("PUT", path, Audience.from_json))

    async def put_policy(
        self,
        client_id: str,
        target: str,
        *,
        allowed_scopes: Iterable[str] | None = None,
        access_token_ttl: int | None = None,
        refresh_token_ttl: int | None = None,
        webhook_include_refresh_token: bool = False,
    ) -> Policy:
        """See :meth:`AdminClient.put_policy`."""
        return await self._run(
            self._policy(
                client_id,
                target,
                allowed_scopes=allowed_scopes,
                access_token_ttl=access_token_ttl,
                refresh_token_ttl=refresh_token_ttl,
                webhook_include_refresh_token=webhook_include_refresh_token,
            )
        )

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
