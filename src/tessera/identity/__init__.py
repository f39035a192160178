"""Identity registry: identities, credentials, grants."""

from tessera.identity.service import ADMIN_ROLE, IdentityRules, IdentityService

__all__ = ["ADMIN_ROLE", "IdentityRules", "IdentityService"]
