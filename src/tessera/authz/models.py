"""Tables of the decision point: policy versions, active versions, catalog/imported entities and
the snapshot version counter."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tessera.db.base import Base


class PolicyVersionRow(Base):
    __tablename__ = "authz_policy_versions"
    __table_args__ = (UniqueConstraint("policy_set", "version",
                                       name="uq_authz_policy_versions_set_version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    policy_set: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    files: Mapped[dict[str, Any]] = mapped_column(JSON)
    schema_fragment: Mapped[str | None] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64))
    author: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(String(1000), default="")
    created_at: Mapped[datetime]


class PolicySetRow(Base):
    """Which version of a policy set is active."""

    __tablename__ = "authz_policy_sets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    active_version: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime]
    updated_by: Mapped[str | None] = mapped_column(String(200))


class EntityRow(Base):
    """A catalog resource or an imported entity, in Cedar's entity shape."""

    __tablename__ = "authz_entities"

    type: Mapped[str] = mapped_column(String(128), primary_key=True)
    eid: Mapped[str] = mapped_column(String(256), primary_key=True)
    source: Mapped[str] = mapped_column(String(16), index=True)
    attrs: Mapped[dict[str, Any]] = mapped_column(JSON)
    parents: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    updated_by: Mapped[str | None] = mapped_column(String(200))


class AuthzStateRow(Base):
    """One row: bumped by every change that a decision snapshot depends on."""

    __tablename__ = "authz_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
