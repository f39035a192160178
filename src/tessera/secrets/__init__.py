"""Dynamic secrets: short-lived database accounts (and later other engines) under leases."""

from tessera.secrets.ports import ConnectionSpec, EngineError, Issued, SecretsEngine, TemplateSpec
from tessera.secrets.service import SecretsService

__all__ = ["ConnectionSpec", "EngineError", "Issued", "SecretsEngine", "SecretsService",
           "TemplateSpec"]
