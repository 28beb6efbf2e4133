"""Gateway mode (issue 9): tenant upstreams, upstream tokens held per grant, retried upstream calls.

* ``tenant_upstreams``: a gateway tenant's upstream base URL and credentials (secret sealed).
* ``upstream_grants``: the upstream refresh token (sealed) and user behind each gateway grant.
* ``upstream_calls``: upstream revocations and user removals retried until the upstream confirms.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenant_upstreams",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("base_url", sa.Text(), nullable=False),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("secret_enc", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("mode IN ('held', 'transparent')", name=op.f("ck_tenant_upstreams_mode")),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_upstreams_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_upstreams")),
        sa.UniqueConstraint("tenant_id", name=op.f("uq_tenant_upstreams_tenant_id")),
    )
    op.create_index(
        "ix_tenant_upstreams_v1",
        "tenant_upstreams",
        ["id"],
        unique=False,
        postgresql_where=sa.text("secret_enc LIKE 'v1.%'"),
    )
    op.create_table(
        "upstream_calls",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("operation", sa.Text(), nullable=False),
        sa.Column("payload_enc", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("completed_at", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.CheckConstraint("operation IN ('revoke', 'user_remove')", name=op.f("ck_upstream_calls_operation")),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_upstream_calls_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upstream_calls")),
    )
    op.create_index(
        "ix_upstream_calls_due",
        "upstream_calls",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("completed_at IS NULL"),
    )
    op.create_index(op.f("ix_upstream_calls_tenant_id"), "upstream_calls", ["tenant_id"], unique=False)
    op.create_index(
        "ix_upstream_calls_v1",
        "upstream_calls",
        ["id"],
        unique=False,
        postgresql_where=sa.text("payload_enc LIKE 'v1.%'"),
    )
    op.create_table(
        "upstream_grants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("token_enc", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("upstream_request_id", sa.Text(), nullable=True),
        sa.Column("lease_until", postgresql.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("updated_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["id"], ["grants.id"], name=op.f("fk_upstream_grants_id_grants"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_upstream_grants_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upstream_grants")),
    )
    op.create_index(
        op.f("ix_upstream_grants_tenant_id_user_id"), "upstream_grants", ["tenant_id", "user_id"], unique=False
    )
    op.create_index(
        "ix_upstream_grants_v1",
        "upstream_grants",
        ["id"],
        unique=False,
        postgresql_where=sa.text("token_enc LIKE 'v1.%'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_upstream_grants_v1", table_name="upstream_grants", postgresql_where=sa.text("token_enc LIKE 'v1.%'")
    )
    op.drop_index(op.f("ix_upstream_grants_tenant_id_user_id"), table_name="upstream_grants")
    op.drop_table("upstream_grants")
    op.drop_index(
        "ix_upstream_calls_v1", table_name="upstream_calls", postgresql_where=sa.text("payload_enc LIKE 'v1.%'")
    )
    op.drop_index(op.f("ix_upstream_calls_tenant_id"), table_name="upstream_calls")
    op.drop_index(
        "ix_upstream_calls_due", table_name="upstream_calls", postgresql_where=sa.text("completed_at IS NULL")
    )
    op.drop_table("upstream_calls")
    op.drop_index(
        "ix_tenant_upstreams_v1", table_name="tenant_upstreams", postgresql_where=sa.text("secret_enc LIKE 'v1.%'")
    )
    op.drop_table("tenant_upstreams")
