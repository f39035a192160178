"""Workload identity federation: trusted external issuers and claim mapping."""

from tessera.federation.service import FederatedIdentity, FederationRejected, FederationService

__all__ = ["FederatedIdentity", "FederationRejected", "FederationService"]
