"""The registry of encrypted columns: what ``keys status``, ``keys reencrypt`` and retirement look at.

Every column here holds tenant data: new values are ``v2`` envelopes under the owning tenant's data
key; ``v1`` values (sealed directly under a ring key, written before data keys existed) are moved to
``v2`` by re-encryption. Each table has a partial index on exactly ``v1_predicate`` so those rows are
found without a scan. The AAD of each value is ``aad_for(aad_table, aad_column, tenant_id, id)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.db.models.token import V1_ROWS as REFRESH_V1_ROWS
from broker.db.models.upstream import UPSTREAM_CALLS_V1_ROWS, UPSTREAM_GRANTS_V1_ROWS, UPSTREAMS_V1_ROWS
from broker.db.models.user import V1_ROWS as USERS_V1_ROWS


@dataclass(frozen=True)
class SealedColumn:
    """One encrypted column and the AAD context of its values."""

    column: str
    aad_column: str


@dataclass(frozen=True)
class SealedTable:
    """A table with tenant-data columns, keyed by ``id`` and owned by ``tenant_id``."""

    name: str
    columns: tuple[SealedColumn, ...]
    v1_predicate: str

    def label(self, column: SealedColumn) -> str:
        """``table.column``, as status reports it."""
        return f"{self.name}.{column.column}"


TENANT_DATA: tuple[SealedTable, ...] = (
    SealedTable(
        "refresh_tokens",
        (SealedColumn("token_enc", "token"), SealedColumn("retry_pair_enc", "retry_pair")),
        REFRESH_V1_ROWS,
    ),
    SealedTable(
        "users",
        (SealedColumn("user_token_enc", "user_token"), SealedColumn("identity_enc", "identity")),
        USERS_V1_ROWS,
    ),
    # Gateway mode (broker.gateway): upstream credentials, held upstream refresh tokens, retried calls.
    SealedTable("tenant_upstreams", (SealedColumn("secret_enc", "secret"),), UPSTREAMS_V1_ROWS),
    SealedTable("upstream_grants", (SealedColumn("token_enc", "token"),), UPSTREAM_GRANTS_V1_ROWS),
    SealedTable("upstream_calls", (SealedColumn("payload_enc", "payload"),), UPSTREAM_CALLS_V1_ROWS),
)
