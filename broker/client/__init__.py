"""A Python client for broker, over HTTP only (httpx; no server code is imported).

* :class:`PartnerClient` / :class:`AsyncPartnerClient`: a client's own OAuth calls — refresh a token
  shared with you using your credentials, introspect, revoke.
* :class:`AdminClient` / :class:`AsyncAdminClient`: the operator's ``/admin/v1`` API — webhook endpoints
  and deliveries, tenants, audiences, policies.
* :func:`verify_webhook` / :class:`WebhookVerifier`: check a webhook's Standard Webhooks signature and
  timestamp (standard library only).

Every failed call raises :class:`BrokerAPIError` with broker's error code and request id.
See ``docs/partners.md`` for a partner's integration, end to end.
"""

from broker.client.admin import AdminClient, AsyncAdminClient
from broker.client.errors import BrokerAPIError, BrokerClientError, WebhookVerificationError
from broker.client.models import (
    Audience,
    DeliveryPage,
    Introspection,
    Policy,
    Tenant,
    TokenResponse,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from broker.client.partner import AsyncPartnerClient, PartnerClient
from broker.client.webhooks import WebhookEvent, WebhookVerifier, sign, verify_webhook

__all__ = [
    "AdminClient",
    "AsyncAdminClient",
    "AsyncPartnerClient",
    "Audience",
    "BrokerAPIError",
    "BrokerClientError",
    "DeliveryPage",
    "Introspection",
    "PartnerClient",
    "Policy",
    "Tenant",
    "TokenResponse",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
    "WebhookVerificationError",
    "WebhookVerifier",
    "sign",
    "verify_webhook",
]
