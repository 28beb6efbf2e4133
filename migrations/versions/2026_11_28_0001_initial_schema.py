"""Initial schema: tenants, secrets, audiences, policies, users, grants, tokens, audit, admin keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = postgresql.TIMESTAMP(timezone=True)
TEXTS = postgresql.ARRAY(sa.Text())
NOW = sa.text("now()")

CRA_PARTNERS = (
    ("urn:plaid:params:cra-partner:experian", "Experian"),
    ("urn:plaid:params:cra-partner:fannie-mae", "Fannie Mae"),
    ("urn:plaid:params:cra-partner:freddie-mac", "Freddie Mac"),
)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("client_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("allowed_scopes", TEXTS, nullable=False),
        sa.Column("default_scopes", TEXTS, nullable=False),
        sa.Column("access_token_ttl", sa.Integer(), nullable=True),
        sa.Column("refresh_token_ttl", sa.Integer(), nullable=True),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("updated_at", TS, server_default=NOW, nullable=False),
        sa.CheckConstraint("kind IN ('customer', 'partner')", name=op.f("ck_tenants_kind")),
        sa.CheckConstraint("status IN ('active', 'disabled')", name=op.f("ck_tenants_status")),
        sa.CheckConstraint("access_token_ttl IS NULL OR access_token_ttl > 0", name=op.f("ck_tenants_access_ttl")),
        sa.CheckConstraint("refresh_token_ttl IS NULL OR refresh_token_ttl > 0", name=op.f("ck_tenants_refresh_ttl")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("client_id", name=op.f("uq_tenants_client_id")),
    )
    op.create_table(
        "client_secrets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("secret_hash", sa.Text(), nullable=False),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("last_used_at", TS, nullable=True),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_client_secrets_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_client_secrets")),
    )
    op.create_index(op.f("ix_client_secrets_tenant_id"), "client_secrets", ["tenant_id"])

    op.create_table(
        "admin_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("last_used_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.CheckConstraint("scope IN ('read', 'write')", name=op.f("ck_admin_keys_scope")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_keys")),
        sa.UniqueConstraint("digest", name=op.f("uq_admin_keys_digest")),
    )

    op.create_table(
        "audiences",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("urn", sa.Text(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("updated_at", TS, server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audiences")),
        sa.UniqueConstraint("urn", name=op.f("uq_audiences_urn")),
    )
    op.create_table(
        "audience_members",
        sa.Column("audience_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["audience_id"],
            ["audiences.id"],
            name=op.f("fk_audience_members_audience_id_audiences"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_audience_members_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("audience_id", "tenant_id", name=op.f("pk_audience_members")),
    )
    op.create_index(op.f("ix_audience_members_tenant_id"), "audience_members", ["tenant_id"])
    op.create_table(
        "audience_policies",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("audience_id", sa.Uuid(), nullable=True),
        sa.Column("target_tenant_id", sa.Uuid(), nullable=True),
        sa.Column("allowed_scopes", TEXTS, nullable=True),
        sa.Column("access_token_ttl", sa.Integer(), nullable=True),
        sa.Column("refresh_token_ttl", sa.Integer(), nullable=True),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("updated_at", TS, server_default=NOW, nullable=False),
        sa.CheckConstraint(
            "(audience_id IS NULL) <> (target_tenant_id IS NULL)", name=op.f("ck_audience_policies_one_target")
        ),
        sa.ForeignKeyConstraint(
            ["audience_id"],
            ["audiences.id"],
            name=op.f("fk_audience_policies_audience_id_audiences"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["target_tenant_id"],
            ["tenants.id"],
            name=op.f("fk_audience_policies_target_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_audience_policies_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audience_policies")),
        sa.UniqueConstraint("tenant_id", "audience_id", name=op.f("uq_audience_policies_tenant_id_audience_id")),
        sa.UniqueConstraint(
            "tenant_id", "target_tenant_id", name=op.f("uq_audience_policies_tenant_id_target_tenant_id")
        ),
    )

    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("client_user_id", sa.Text(), nullable=False),
        sa.Column("user_token_digest", sa.LargeBinary(), nullable=False),
        sa.Column("user_token_enc", sa.Text(), nullable=False),
        sa.Column("identity_enc", sa.Text(), nullable=True),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("updated_at", TS, nullable=True),
        sa.Column("removed_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_users_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("user_id", name=op.f("uq_users_user_id")),
        sa.UniqueConstraint("user_token_digest", name=op.f("uq_users_user_token_digest")),
    )
    op.create_index(
        "uq_users_tenant_id_client_user_id_live",
        "users",
        ["tenant_id", "client_user_id"],
        unique=True,
        postgresql_where=sa.text("removed_at IS NULL"),
    )

    op.create_table(
        "grants",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("requester_tenant_id", sa.Uuid(), nullable=False),
        sa.Column("holder_tenant_id", sa.Uuid(), nullable=True),
        sa.Column("parent_id", sa.Uuid(), nullable=True),
        sa.Column("path", postgresql.ARRAY(sa.Uuid()), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("user_pk", sa.Uuid(), nullable=True),
        sa.Column("scopes", TEXTS, nullable=False),
        sa.Column("audience", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=True),
        sa.Column("subject_token_type", sa.Text(), nullable=True),
        sa.Column("access_token_ttl", sa.Integer(), nullable=False),
        sa.Column("refresh_token_ttl", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('client_credentials', 'user', 'exchange', 'multi_party', 'party')", name=op.f("ck_grants_kind")
        ),
        sa.ForeignKeyConstraint(
            ["holder_tenant_id"], ["tenants.id"], name=op.f("fk_grants_holder_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["requester_tenant_id"],
            ["tenants.id"],
            name=op.f("fk_grants_requester_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["grants.id"], name=op.f("fk_grants_parent_id_grants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_grants_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["user_pk"], ["users.id"], name=op.f("fk_grants_user_pk_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_grants")),
    )
    op.create_index(op.f("ix_grants_tenant_id_user_pk"), "grants", ["tenant_id", "user_pk"])
    op.create_index(op.f("ix_grants_parent_id"), "grants", ["parent_id"])
    op.create_index(op.f("ix_grants_holder_tenant_id"), "grants", ["holder_tenant_id"])
    op.create_index(op.f("ix_grants_requester_tenant_id"), "grants", ["requester_tenant_id"])
    op.create_index("ix_grants_path", "grants", ["path"], postgresql_using="gin")

    op.create_table(
        "grant_parties",
        sa.Column("grant_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("via", sa.Text(), nullable=False),
        sa.Column("withdrawn_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["grant_id"], ["grants.id"], name=op.f("fk_grant_parties_grant_id_grants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_grant_parties_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("grant_id", "tenant_id", name=op.f("pk_grant_parties")),
    )
    op.create_index(op.f("ix_grant_parties_tenant_id"), "grant_parties", ["tenant_id"])

    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("grant_id", sa.Uuid(), nullable=False),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("token_enc", sa.Text(), nullable=False),
        sa.Column("parent_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("rotated_at", TS, nullable=True),
        sa.Column("successor_id", sa.Uuid(), nullable=True),
        sa.Column("retry_pair_enc", sa.Text(), nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["grant_id"], ["grants.id"], name=op.f("fk_refresh_tokens_grant_id_grants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["refresh_tokens.id"],
            name=op.f("fk_refresh_tokens_parent_id_refresh_tokens"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_refresh_tokens_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refresh_tokens")),
        sa.UniqueConstraint("digest", name=op.f("uq_refresh_tokens_digest")),
    )
    op.create_index(op.f("ix_refresh_tokens_tenant_id_grant_id"), "refresh_tokens", ["tenant_id", "grant_id"])
    op.create_index(op.f("ix_refresh_tokens_grant_id"), "refresh_tokens", ["grant_id"])

    op.create_table(
        "access_tokens",
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("grant_id", sa.Uuid(), nullable=False),
        sa.Column("scopes", TEXTS, nullable=False),
        sa.Column("created_at", TS, server_default=NOW, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["grant_id"], ["grants.id"], name=op.f("fk_access_tokens_grant_id_grants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_access_tokens_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_access_tokens")),
    )
    op.create_index(op.f("ix_access_tokens_tenant_id_grant_id"), "access_tokens", ["tenant_id", "grant_id"])
    op.create_index(op.f("ix_access_tokens_grant_id"), "access_tokens", ["grant_id"])

    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("occurred_at", TS, server_default=NOW, nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("grant_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Text(), nullable=True),
        sa.Column("detail", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_tenant_id_occurred_at"), "audit_events", ["tenant_id", "occurred_at"])
    op.create_index(op.f("ix_audit_events_grant_id"), "audit_events", ["grant_id"])

    for urn, name in CRA_PARTNERS:
        op.execute(
            sa.text("INSERT INTO audiences (id, urn, display_name) VALUES (gen_random_uuid(), :urn, :name)").bindparams(
                urn=urn, name=name
            )
        )


def downgrade() -> None:
    for table in (
        "audit_events",
        "access_tokens",
        "refresh_tokens",
        "grant_parties",
        "grants",
        "users",
        "audience_policies",
        "audience_members",
        "audiences",
        "admin_keys",
        "client_secrets",
        "tenants",
    ):
        op.drop_table(table)
