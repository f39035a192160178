"""How the CLI talks to the server: an admin token from the data directory's key, then httpx."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import JWKRegistry

from tessera.bootstrap import ADMIN_INFO_FILE, ADMIN_KEY_FILE
from tessera.config import Settings


class CLIError(Exception):
    """A failure to show the user as one clear line."""


def client_assertion(client_id: str, private_jwk: dict[str, Any], audience: str) -> str:
    now = int(time.time())
    key = JWKRegistry.import_key(private_jwk)
    header = {"alg": private_jwk.get("alg", "ES256"), "kid": private_jwk.get("kid"),
              "typ": "JWT"}
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": now,
              "exp": now + 60, "jti": secrets.token_urlsafe(16)}
    return jwt.encode(header, claims, key)


def load_admin(data_dir: Path) -> tuple[str, dict[str, Any]]:
    key_path, info_path = data_dir / ADMIN_KEY_FILE, data_dir / ADMIN_INFO_FILE
    if not key_path.exists() or not info_path.exists():
        raise CLIError(f"no admin key in {data_dir}; run `tessera init` there or set "
                       "TESSERA_DATA_DIR (or TESSERA_TOKEN)")
    try:
        return json.loads(info_path.read_text())["client_id"], json.loads(key_path.read_text())
    except (ValueError, KeyError) as exc:
        raise CLIError(f"{key_path} or {info_path} is not readable") from exc


def fetch_token(settings: Settings, data_dir: Path | None = None) -> str:
    base = settings.server_url
    client_id, jwk = load_admin(data_dir or settings.data_dir)
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            meta = http.get("/.well-known/oauth-authorization-server")
            meta.raise_for_status()
            endpoint = meta.json()["token_endpoint"]
            resp = http.post("/oauth2/token", data={
                "grant_type": "client_credentials",
                "client_assertion_type":
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": client_assertion(client_id, jwk, endpoint)})
    except httpx.HTTPError as exc:
        raise CLIError(f"cannot reach Tessera at {base}: {exc}") from exc
    if resp.status_code != 200:
        body = resp.json() if resp.headers.get("content-type", "").startswith(
            "application/json") else {}
        raise CLIError(f"token request refused: {body.get('error', resp.status_code)} "
                       f"{body.get('error_description', '')}".strip())
    return str(resp.json()["access_token"])


class Api:
    """Authenticated calls to the management API; problem+json errors become CLIError."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._token = os.environ.get("TESSERA_TOKEN")

    def _auth(self) -> dict[str, str]:
        if not self._token:
            self._token = fetch_token(self.settings)
        return {"Authorization": f"Bearer {self._token}"}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            with httpx.Client(base_url=self.settings.server_url, timeout=30) as http:
                resp = http.request(method, path, headers=self._auth(), **kwargs)
        except httpx.HTTPError as exc:
            raise CLIError(f"cannot reach Tessera at {self.settings.server_url}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = {}
            detail = body.get("detail") or body.get("error_description") or resp.text[:200]
            errs = body.get("errors")
            if errs:
                detail += ": " + "; ".join(f"{'.'.join(e['loc'][1:])}: {e['msg']}"
                                           for e in errs)
            raise CLIError(f"{resp.status_code} {body.get('code', '')}: {detail}")
        return resp.json() if resp.content else None
