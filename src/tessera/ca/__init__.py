"""Built-in certificate authority: SPIFFE X.509-SVIDs, trust bundle, client-certificate checks."""

from tessera.ca.service import CAService, IssuedSVID

__all__ = ["CAService", "IssuedSVID"]
