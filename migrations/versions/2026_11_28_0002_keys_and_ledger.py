"""Keys, secrets and the sharing ledger (issue 4): tenant data keys, audit hash chain.

* ``tenant_keys``: per-tenant data keys, stored wrapped by the configured key ring (at most one live
  key per tenant; shredded keys stay as tombstones without key material).
* Partial indexes on the rows still sealed directly under a ring key (``v1`` envelopes), so
  ``broker keys reencrypt`` and key retirement checks find them without scanning the tables.
* ``audit_events.seq``/``hash`` and ``audit_chains``: the per-tenant hash chain, sealed after the fact;
  indexes for the audit API's user and actor filters.

Existing rows are not rewritten here: ``broker keys reencrypt`` moves them to tenant data keys online.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = postgresql.TIMESTAMP(timezone=True)
NOW = sa.text("now()")
REFRESH_V1 = "token_enc LIKE 'v1.%' OR retry_pair_enc LIKE 'v1.%'"
USERS_V1 = "user_token_enc LIKE 'v1.%' OR identity_enc LIKE 'v1.%'"


def upgrade() -> None:
    op.create_table(
        "tenant_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("wrapped", sa.Text(), nullable=True),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("shredded_at", TS, nullable=True),
        sa.CheckConstraint(
            "(wrapped IS NULL) = (shredded_at IS NOT NULL)", name=op.f("ck_tenant_keys_wrapped_unless_shredded")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_keys_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_keys")),
    )
    op.create_index(op.f("ix_tenant_keys_tenant_id"), "tenant_keys", ["tenant_id"])
    op.create_index(
        "uq_tenant_keys_tenant_id_live",
        "tenant_keys",
        ["tenant_id"],
        unique=True,
        postgresql_where=sa.text("shredded_at IS NULL"),
    )

    op.create_index("ix_refresh_tokens_v1", "refresh_tokens", ["id"], postgresql_where=sa.text(REFRESH_V1))
    op.create_index("ix_users_v1", "users", ["id"], postgresql_where=sa.text(USERS_V1))

    op.add_column("audit_events", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.add_column("audit_events", sa.Column("hash", sa.LargeBinary(), nullable=True))
    op.create_index(
        "ix_audit_events_user_id", "audit_events", ["user_id"], postgresql_where=sa.text("user_id IS NOT NULL")
    )
    op.create_index(op.f("ix_audit_events_actor"), "audit_events", ["actor"])
    op.create_index(
        "ix_audit_events_unsealed", "audit_events", ["tenant_id", "id"], postgresql_where=sa.text("seq IS NULL")
    )
    op.create_index(
        "ix_audit_events_chain", "audit_events", ["tenant_id", "seq"], postgresql_where=sa.text("seq IS NOT NULL")
    )
    op.create_table(
        "audit_chains",
        sa.Column("chain_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=True),
        sa.Column("sealed_at", TS, server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("chain_id", name=op.f("pk_audit_chains")),
    )


def downgrade() -> None:
    op.drop_table("audit_chains")
    for index in (
        "ix_audit_events_chain",
        "ix_audit_events_unsealed",
        "ix_audit_events_actor",
        "ix_audit_events_user_id",
    ):
        op.drop_index(index, table_name="audit_events")
    op.drop_column("audit_events", "hash")
    op.drop_column("audit_events", "seq")
    op.drop_index("ix_users_v1", table_name="users")
    op.drop_index("ix_refresh_tokens_v1", table_name="refresh_tokens")
    op.drop_table("tenant_keys")
