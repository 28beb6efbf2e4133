"""Audit sealing in blocks: no per-event UPDATE (issue 6).

Until now the sealer wrote ``seq`` and ``hash`` into every audit row it linked: a non-HOT UPDATE of a
wide row with seven indexes, about as much write work again as inserting the event. From here on an
event is never updated. Each one records the transaction that wrote it (``xact``); the sealer takes the
events of transactions that have ended, past a single watermark (``audit_seal_mark``), and appends one
``audit_blocks`` row per chain and round: the events' ids, a digest of each, and an HMAC that links the
block to the one before it.

Rows already sealed keep their ``seq`` and ``hash`` and are still verified as before; a chain's first
block links to the last of them. Rows not yet sealed get ``xact = 0``, so the first round seals them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

XACT = "CAST(CAST(pg_current_xact_id() AS text) AS bigint)"


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("xact", sa.BigInteger(), nullable=True))  # no rewrite of old rows
    op.alter_column("audit_events", "xact", server_default=sa.text(XACT))
    op.execute("UPDATE audit_events SET xact = 0 WHERE seq IS NULL")
    op.drop_index("ix_audit_events_unsealed", table_name="audit_events")
    op.create_index(
        "ix_audit_events_xact", "audit_events", ["xact", "id"], postgresql_where=sa.text("xact IS NOT NULL")
    )
    op.add_column("audit_chains", sa.Column("blocks", sa.BigInteger(), server_default=sa.text("0"), nullable=False))
    op.add_column("audit_chains", sa.Column("block_hash", sa.LargeBinary(), nullable=True))
    op.create_table(
        "audit_blocks",
        sa.Column("chain_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_ids", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("digests", sa.LargeBinary(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("sealed_at", postgresql.TIMESTAMP(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", "seq", name=op.f("pk_audit_blocks")),
    )
    op.create_table(
        "audit_seal_mark",
        sa.Column("id", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("xact", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("event_id", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint("id", name=op.f("ck_audit_seal_mark_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_seal_mark")),
    )
    op.execute("INSERT INTO audit_seal_mark DEFAULT VALUES")


def downgrade() -> None:
    # Events sealed in blocks go back to unsealed (the per-row sealer will link them again).
    op.drop_table("audit_seal_mark")
    op.drop_table("audit_blocks")
    op.drop_column("audit_chains", "block_hash")
    op.drop_column("audit_chains", "blocks")
    op.drop_index("ix_audit_events_xact", table_name="audit_events", postgresql_where=sa.text("xact IS NOT NULL"))
    op.create_index(
        "ix_audit_events_unsealed", "audit_events", ["tenant_id", "id"], postgresql_where=sa.text("seq IS NULL")
    )
    op.drop_column("audit_events", "xact")
