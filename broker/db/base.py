"""Declarative base: a naming convention for constraints and ``lazy="raise"`` relationships only."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import MetaData, func
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base of every model. Tables are created only by Alembic migrations, never ``create_all``."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: TIMESTAMP(timezone=True)}  # noqa: RUF012


def uuid_pk() -> Mapped[uuid.UUID]:
    """A UUID primary key generated client-side, so the id is known before insert (AAD binding)."""
    return mapped_column(primary_key=True, default=uuid.uuid4)


def server_now() -> Mapped[datetime]:
    """Creation time, set by the database."""
    return mapped_column(server_default=func.now())
