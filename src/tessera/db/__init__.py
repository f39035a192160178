"""Storage: engine, sessions, declarative base and migrations."""

from tessera.db.base import Base
from tessera.db.engine import make_engine, make_session_factory

__all__ = ["Base", "make_engine", "make_session_factory"]
