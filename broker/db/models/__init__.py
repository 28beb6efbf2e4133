"""Every model, imported so that ``Base.metadata`` knows all tables (for Alembic's comparisons)."""

from broker.db.models.admin_key import AdminKey
from broker.db.models.audience import Audience, AudienceMember, AudiencePolicy
from broker.db.models.audit import AuditBlock, AuditChain, AuditEvent, AuditSealMark
from broker.db.models.grant import Grant, GrantParty
from broker.db.models.keys import TenantKey
from broker.db.models.tenant import ClientSecret, Tenant
from broker.db.models.token import AccessToken, RefreshToken
from broker.db.models.upstream import TenantUpstream, UpstreamCall, UpstreamGrant
from broker.db.models.user import User
from broker.db.models.webhook import WebhookAttempt, WebhookDelivery, WebhookEndpoint

__all__ = [
    "AccessToken",
    "AdminKey",
    "Audience",
    "AudienceMember",
    "AudiencePolicy",
    "AuditBlock",
    "AuditChain",
    "AuditEvent",
    "AuditSealMark",
    "ClientSecret",
    "Grant",
    "GrantParty",
    "RefreshToken",
    "Tenant",
    "TenantKey",
    "TenantUpstream",
    "UpstreamCall",
    "UpstreamGrant",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
