"""Partner webhooks (issue 5): endpoints, the transactional outbox, deliveries and attempts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from collections.abc import Sequence

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Filled in by the webhooks work."""


def downgrade() -> None:
    """Filled in by the webhooks work."""
