"""Helpers for the key-provider tests (their own Services, so their own identities)."""

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def make_csr_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def register(svc: Any, name: str, kind: str = "agent", roles: tuple[str, ...] = ()) -> Any:
    """Register an identity with a key on `svc`; returns an object with `.id` and `.form()`."""
    import secrets
    import time
    from datetime import timedelta

    from joserfc import jwt
    from joserfc.jwk import ECKey

    from tessera.identity.schemas import CredentialCreate, IdentityCreate

    key = ECKey.generate_key("P-256", private=True)
    with svc.sessions() as s:
        fields: dict[str, Any] = {}
        if kind != "human":
            owner = svc.identities.register(s, IdentityCreate(
                name=f"owner-{secrets.token_hex(3)}", kind="human"), actor="test")
            fields = {"owner": owner.id, "purpose": "testing",
                      "expires_at": svc.clock.now() + timedelta(days=30)}
        row = svc.identities.register(s, IdentityCreate(name=name, kind=kind, **fields),
                                      actor="test")
        for role in roles:
            svc.identities.grant_role(s, row.id, role, actor="test")
        cred = svc.identities.add_credential(s, row.id, CredentialCreate(
            jwk=key.as_dict(private=False)), actor="test")
        s.commit()
        identity_id, kid = row.id, cred.kid

    class _Actor:
        id = identity_id

        @staticmethod
        def form() -> dict[str, str]:
            now = int(time.time())
            assertion = jwt.encode({"alg": "ES256", "kid": kid}, {
                "iss": identity_id, "sub": identity_id, "aud": "http://tessera.test/oauth2/token",
                "iat": now, "exp": now + 60, "jti": secrets.token_hex(8)}, key)
            return {"grant_type": "client_credentials", "client_assertion": assertion,
                    "client_assertion_type":
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}

    return _Actor()
