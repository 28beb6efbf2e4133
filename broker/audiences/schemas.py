"""Admin API bodies for audiences, their members, and audience policies."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from broker.audiences.policies import PolicyView
    from broker.audiences.service import AudienceView


class AudienceCreate(msgspec.Struct, forbid_unknown_fields=True):
    urn: str
    display_name: str


class AudienceUpdate(msgspec.Struct, forbid_unknown_fields=True):
    display_name: str


class AudienceOut(msgspec.Struct):
    urn: str
    display_name: str
    members: list[str]
    """Client ids of the partner clients acting for this audience."""
    created_at: datetime
    updated_at: datetime


class AudienceList(msgspec.Struct):
    data: list[AudienceOut]


class PolicyIn(msgspec.Struct, forbid_unknown_fields=True):
    target: str
    """A registered audience URN or another tenant's client id."""
    allowed_scopes: list[str] | None = None
    access_token_ttl: int | None = None
    refresh_token_ttl: int | None = None
    webhook_include_refresh_token: bool = False
    """Send the shared refresh token in ``grant.shared`` webhooks to this target's parties (off by default)."""


class PolicyOut(msgspec.Struct):
    target: str
    target_kind: str
    """``audience`` or ``client``."""
    allowed_scopes: list[str] | None
    access_token_ttl: int | None
    refresh_token_ttl: int | None
    webhook_include_refresh_token: bool
    created_at: datetime
    updated_at: datetime


class PolicyList(msgspec.Struct):
    data: list[PolicyOut]


def audience_out(view: AudienceView) -> AudienceOut:
    return AudienceOut(
        urn=view.audience.urn,
        display_name=view.audience.display_name,
        members=list(view.members),
        created_at=view.audience.created_at,
        updated_at=view.audience.updated_at,
    )


def policy_out(view: PolicyView) -> PolicyOut:
    policy = view.policy
    return PolicyOut(
        target=view.target,
        target_kind=view.target_kind,
        allowed_scopes=list(policy.allowed_scopes) if policy.allowed_scopes is not None else None,
        access_token_ttl=policy.access_token_ttl,
        refresh_token_ttl=policy.refresh_token_ttl,
        webhook_include_refresh_token=policy.webhook_include_refresh_token,
        created_at=policy.created_at,
        updated_at=policy.updated_at,
    )
