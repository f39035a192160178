"""Signing keys: the KeyProvider port, the key service (active signer, JWKS), software keys.

The PKCS#11 backend (`tessera.keys.pkcs11`) needs its optional library and rotation
(`tessera.keys.rotation`) records audit events, so both are imported from their modules:
importing them here would make every user of a key port load them.
"""

from tessera.keys.jws import sign_compact
from tessera.keys.ports import SUPPORTED_ALGS, GeneratedKey, KeyProvider, Signer
from tessera.keys.service import KeyService, NoActiveKey
from tessera.keys.software import KeyProviderError, SoftwareKeyProvider

__all__ = ["SUPPORTED_ALGS", "GeneratedKey", "KeyProvider", "KeyProviderError", "KeyService",
           "NoActiveKey", "SoftwareKeyProvider", "Signer", "sign_compact"]
