"""PKCS#11 KeyProvider (python-pkcs11): keys are generated, kept and used inside an HSM.

Private keys are created on the token with CKA_SENSITIVE=true and CKA_EXTRACTABLE=false
(PKCS#11 v2.40 §4.9), so neither Tessera nor anyone who takes over its process can read them;
every signature is computed by the token. Only the public half leaves it, to be published.
Tessera stores nothing secret for these keys: the blob it keeps names the key's label.

Selected with TESSERA_KEYS__PROVIDER=pkcs11, TESSERA_KEYS__PKCS11_MODULE (path of the module,
e.g. /usr/lib/softhsm/libsofthsm2.so), TESSERA_KEYS__PKCS11_TOKEN_LABEL and
TESSERA_KEYS__PKCS11_PIN (the user PIN, from the environment only).
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from cryptography.hazmat.primitives.serialization import load_der_public_key

from tessera.keys.ports import GeneratedKey, Signer
from tessera.keys.software import KeyProviderError, public_jwk_of

# INVARIANT: C_Initialize is process-wide, so one loaded module per path, shared by providers.
_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()


def _lib(module: str) -> Any:
    import pkcs11

    with _LIBS_LOCK:
        if module not in _LIBS:
            try:
                _LIBS[module] = pkcs11.lib(module)
            except Exception as exc:
                raise KeyProviderError(f"cannot load the PKCS#11 module {module}") from exc
        return _LIBS[module]


class PKCS11Signer:
    """Signs through the token; the private key object never leaves it."""

    def __init__(self, kid: str, alg: str, key: Any, lock: threading.Lock) -> None:
        self.kid = kid
        self.alg = alg
        self._key = key
        self._lock = lock

    def sign(self, data: bytes) -> bytes:
        from pkcs11 import Mechanism

        # CKM_ECDSA over a SHA-256 digest: the same signature as CKM_ECDSA_SHA256, and every
        # token supports it. PKCS#11 returns r || s, the JWS form (RFC 7518 §3.4).
        digest = hashlib.sha256(data).digest()
        with self._lock:
            return bytes(self._key.sign(digest, mechanism=Mechanism.ECDSA))


class PKCS11KeyProvider:
    """ES256 keys on a PKCS#11 token (EdDSA is refused: not every token supports it)."""

    name = "pkcs11"

    def __init__(self, module: str, token_label: str, pin: str) -> None:
        from pkcs11.exceptions import PKCS11Error, UserAlreadyLoggedIn

        self._lock = threading.Lock()
        try:
            token = _lib(module).get_token(token_label=token_label)
            try:
                self._session = token.open(user_pin=pin, rw=True)
            except UserAlreadyLoggedIn:
                # PKCS#11 login is per application: another session of this process holds it.
                self._session = token.open(rw=True)
        except KeyProviderError:
            raise
        except (PKCS11Error, RuntimeError, ValueError) as exc:  # never echo the PIN
            raise KeyProviderError(
                f"cannot open PKCS#11 token {token_label!r}: {type(exc).__name__}") from exc

    def generate(self, kid: str, alg: str) -> GeneratedKey:
        from pkcs11 import Attribute, KeyType
        from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

        if alg != "ES256":
            raise KeyProviderError("the PKCS#11 provider makes ES256 (EC P-256) keys only")
        with self._lock:
            params = self._session.create_domain_parameters(KeyType.EC, {
                Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
            public, _private = params.generate_keypair(
                store=True, label=kid, id=kid.encode(),
                public_template={Attribute.VERIFY: True, Attribute.TOKEN: True},
                private_template={Attribute.SIGN: True, Attribute.TOKEN: True,
                                  Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                                  Attribute.EXTRACTABLE: False})
            spki = encode_ec_public_key(public)
        jwk = public_jwk_of(load_der_public_key(spki), kid, alg)
        return GeneratedKey(jwk, json.dumps({"label": kid}).encode())

    def _private(self, kid: str) -> Any:
        from pkcs11 import ObjectClass
        from pkcs11.exceptions import NoSuchKey

        try:
            return self._session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=kid)
        except NoSuchKey as exc:
            raise KeyProviderError(f"key {kid} is not on the PKCS#11 token") from exc

    def load_signer(self, kid: str, alg: str, blob: bytes | None) -> Signer:
        label = json.loads(blob)["label"] if blob else kid
        with self._lock:
            key = self._private(label)
        return PKCS11Signer(kid, alg, key, self._lock)

    def destroy(self, kid: str, blob: bytes | None) -> None:
        from pkcs11 import Attribute, ObjectClass

        label = json.loads(blob)["label"] if blob else kid
        with self._lock:
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                for obj in self._session.get_objects({Attribute.CLASS: cls,
                                                      Attribute.LABEL: label}):
                    obj.destroy()

    def close(self) -> None:
        with self._lock:
            self._session.close()
