"""Signing keys: the KeyProvider port, software and PKCS#11 stores, rotation and JWKS."""
