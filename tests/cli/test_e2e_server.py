"""End to end: `tessera init`, `tessera serve` as a real process, Authlib as the client."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from joserfc.jwk import ECKey

TESSERA = [sys.executable, "-m", "tessera.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(url: str, proc: subprocess.Popen[Any], output: Callable[[], str],
                       timeout: float = 30) -> None:
    """Poll `url`/healthz until the server answers; fail with its output if it exits or
    does not answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"server did not start: {output()}")
        time.sleep(0.1)


def env_for(data_dir: Path, port: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env["TESSERA_DATA_DIR"] = str(data_dir)
    if port:
        env["TESSERA_PORT"] = str(port)
        env["TESSERA_URL"] = f"http://127.0.0.1:{port}"
    return env


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*TESSERA, *args], env=env, capture_output=True, text=True,
                          timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"tessera {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    data = tmp_path / "data"
    port = free_port()
    env = env_for(data, port)
    cli(env, "init")
    proc = subprocess.Popen([*TESSERA, "serve", "--log-level", "warning"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, proc, lambda: proc.stdout.read())  # type: ignore[union-attr]
        yield url, env, data
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's PrivateKeyJWT with a 60 s assertion (its default, 1 h, exceeds Tessera's 5 min)."""

    def sign(self, auth, token_endpoint):  # type: ignore[no-untyped-def]
        return private_key_jwt_sign(auth.client_secret, client_id=auth.client_id,
                                    token_endpoint=token_endpoint, alg=self.alg,
                                    header=self.headers, expires_in=60)


def authlib_token(url: str, client_id: str, private_jwk: dict) -> dict:
    endpoint = f"{url}/oauth2/token"
    # Authlib takes the private key as the client "secret" for private_key_jwt.
    client = OAuth2Client(client_id, ECKey.import_key(private_jwk),
                          token_endpoint_auth_method="private_key_jwt")
    client.register_client_auth_method(ShortLivedPrivateKeyJWT(endpoint, alg=private_jwk["alg"]))
    try:
        return dict(client.fetch_token(endpoint, grant_type="client_credentials"))
    finally:
        client.close()


@pytest.mark.slow
def test_authlib_client_gets_token_and_calls_api(server: tuple[str, dict, Path]) -> None:
    url, env, data = server
    admin_id = json.loads((data / "admin.json").read_text())["client_id"]
    admin_jwk = json.loads((data / "admin-key.jwk").read_text())
    token = authlib_token(url, admin_id, admin_jwk)
    assert token["token_type"] == "Bearer" and token["expires_in"] == 900
    resp = httpx.get(f"{url}/v1/identities",
                     headers={"Authorization": f"Bearer {token['access_token']}"})
    assert resp.status_code == 200
    assert [i["name"] for i in resp.json()["items"]] == ["admin"]

    # The walkthrough: register an agent with the CLI, add its key, get its token.
    agent = json.loads(cli(env, "identity", "register", "research-agent", "--kind", "agent",
                           "--owner", admin_id, "--purpose", "summarise papers",
                           "--expires", "30d", "--scope", "papers:read", "--json").stdout)
    key = ECKey.generate_key("P-256", private=True)
    (data / "agent.pub.jwk").write_text(json.dumps(key.as_dict(private=False)))
    cli(env, "credential", "add", agent["id"], str(data / "agent.pub.jwk"))
    agent_jwk = key.as_dict(private=True) | {"kid": key.thumbprint(), "alg": "ES256"}
    agent_token = authlib_token(url, agent["id"], agent_jwk)
    assert agent_token["scope"] == "papers:read"
    listed = json.loads(cli(env, "audit", "list", "--type", "oauth.token.issued",
                            "--json").stdout)
    assert agent["id"] in {e["subject"] for e in listed["items"]}
    assert cli(env, "audit", "verify").returncode == 0
    # A non-admin token is refused by the management API.
    resp = httpx.get(f"{url}/v1/identities",
                     headers={"Authorization": f"Bearer {agent_token['access_token']}"})
    assert resp.status_code == 403


def test_init_is_idempotent_and_keeps_secrets_private(tmp_path: Path) -> None:
    data = tmp_path / "d"
    env = env_for(data)
    first = cli(env, "init", "--trust-domain", "acme.test")
    assert "created" in first.stdout
    key_before = (data / "admin-key.jwk").read_bytes()
    second = cli(env, "init")
    assert "created" not in second.stdout and "exists" in second.stdout
    assert (data / "admin-key.jwk").read_bytes() == key_before
    for name in ("admin-key.jwk", "master.key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600
    assert "d" in json.loads(key_before)  # the admin's private JWK, for `tessera token`


def test_init_rejects_bad_trust_domain(tmp_path: Path) -> None:
    proc = cli(env_for(tmp_path / "d"), "init", "--trust-domain", "Bad Domain!", check=False)
    assert proc.returncode != 0 and "trust domain" in proc.stderr


def test_serve_refuses_unmigrated_database(tmp_path: Path) -> None:
    from tessera.db import make_engine

    data = tmp_path / "d"
    data.mkdir()
    make_engine(f"sqlite:///{data / 'tessera.db'}").connect().close()  # empty database
    proc = cli(env_for(data, free_port()), "serve", check=False)
    assert proc.returncode != 0
    assert "not migrated" in proc.stderr


def test_serve_without_init_says_so(tmp_path: Path) -> None:
    proc = cli(env_for(tmp_path / "nothing", free_port()), "serve", check=False)
    assert proc.returncode != 0 and "tessera init" in proc.stderr


def test_token_without_admin_key_explains(tmp_path: Path) -> None:
    proc = cli(env_for(tmp_path / "none"), "token", check=False)
    assert proc.returncode != 0 and "tessera init" in proc.stderr


def test_every_command_has_help() -> None:
    out = cli(os.environ.copy(), "--help").stdout
    for command in ("init", "serve", "token", "identity", "credential", "audit"):
        assert command in out
    for group in ("identity", "credential", "audit"):
        text = cli(os.environ.copy(), group, "--help").stdout
        assert "Commands" in text


def test_serve_tightens_a_loose_data_directory_at_start(tmp_path: Path) -> None:
    data = tmp_path / "d"
    port = free_port()
    env = env_for(data, port)
    cli(env, "init")
    os.chmod(data, 0o755)
    for name in ("tessera.db", "master.key", "admin-key.jwk"):
        os.chmod(data / name, 0o644)
    proc = subprocess.Popen([*TESSERA, "serve", "--log-level", "warning"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("tessera.db", "master.key", "admin-key.jwk"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
        assert f"tightened {data / name} from mode 0644 to 0600" in output
    assert f"tightened {data} from mode 0755 to 0700" in output
