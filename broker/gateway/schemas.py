"""Admin API bodies for a tenant's upstream. No response ever carries the upstream secret."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from broker.gateway.upstreams import UpstreamView


class UpstreamSet(msgspec.Struct, forbid_unknown_fields=True):
    base_url: str
    client_id: str
    secret: str
    mode: str = "held"

    def __repr__(self) -> str:
        return f"UpstreamSet(base_url={self.base_url!r}, client_id={self.client_id!r}, mode={self.mode!r}, secret=***)"


class UpstreamOut(msgspec.Struct):
    tenant: str
    base_url: str
    client_id: str
    mode: str
    secret_fingerprint: str
    created_at: datetime
    updated_at: datetime


def upstream_out(view: UpstreamView) -> UpstreamOut:
    return UpstreamOut(
        tenant=view.tenant_client_id,
        base_url=view.base_url,
        client_id=view.client_id,
        mode=view.mode,
        secret_fingerprint=view.secret_fingerprint,
        created_at=view.created_at,
        updated_at=view.updated_at,
    )
