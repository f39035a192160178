"""Runnable example: an agent with DPoP-bound, auto-renewed tokens calls a protected API, then
acts for a person through token exchange. Everything runs locally on 127.0.0.1.

    .venv/bin/python examples/agent_and_resource_server.py

What it does:
1. `tessera init` in a temporary directory, then starts Tessera (uvicorn, in a thread).
2. Registers a person (`alice`) and an agent allowed to act for her (as an admin would with
   `tessera identity register ...`; here through the same services, in-process).
3. Starts a resource server: a FastAPI app protected by `tessera.sdk.TesseraMiddleware`.
4. The agent uses `tessera.sdk.TesseraClient` + `TesseraAuth` (private_key_jwt, DPoP) to call it.
5. Alice's token is exchanged by the agent (RFC 8693); the API sees `sub=alice`, `act=agent`.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from joserfc.jwk import ECKey

from tessera.sdk import TesseraAuth, TesseraClient, TesseraMiddleware, Verifier


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(app: Any, port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("server did not start")
        time.sleep(0.05)
    return server


def setup_tessera(data_dir: Path, issuer: str, api: str) -> dict[str, Any]:
    """Server side, done once by an administrator."""
    from tessera.bootstrap import init
    from tessera.config import Settings
    from tessera.container import build
    from tessera.identity.schemas import CredentialCreate, IdentityCreate

    settings = Settings(data_dir=data_dir, issuer=issuer)
    report = init(settings)
    services = build(settings)
    alice_key = ECKey.generate_key("P-256", private=True)
    agent_key = ECKey.generate_key("P-256", private=True)
    with services.sessions() as s:
        alice = services.identities.register(s, IdentityCreate(
            name="alice", kind="human", allowed_scopes=["reports:read"]), actor=report.admin_id)
        agent = services.identities.register(s, IdentityCreate(
            name="report-bot", kind="agent", owner=alice.id, purpose="summarise reports",
            expires_at=datetime.now(UTC) + timedelta(days=30),
            allowed_scopes=["reports:read"], allowed_audiences=[api],
            dpop_required=True, may_act_for=[alice.id]), actor=report.admin_id)
        for row, key in ((alice, alice_key), (agent, agent_key)):
            services.identities.add_credential(s, row.id, CredentialCreate(
                jwk=key.as_dict(private=False)), actor=report.admin_id)
        s.commit()
    services.close()
    return {"settings": settings, "alice": (alice.id, alice_key),
            "agent": (agent.id, agent_key)}


def resource_server(issuer: str, audience: str) -> FastAPI:
    """A protected API: every request needs a valid Tessera token for `audience`."""
    app = FastAPI()

    @app.get("/reports")
    def reports(request: Request) -> dict[str, Any]:
        token = request.state.tessera_token
        if not token.has_scope("reports:read"):
            return {"error": "insufficient_scope"}
        return {"caller": token.subject, "acting_agent": (token.actor or {}).get("client_id"),
                "token_type": token.token_type, "reports": ["q1.pdf", "q2.pdf"]}

    app.add_middleware(TesseraMiddleware, verifier=Verifier(issuer, audience))
    return app


def main() -> None:
    tessera_port, api_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{tessera_port}"
    api = f"http://127.0.0.1:{api_port}"
    with tempfile.TemporaryDirectory() as tmp:
        world = setup_tessera(Path(tmp) / "data", issuer, api)
        from tessera.api.app import create_app

        servers = [serve(create_app(world["settings"]), tessera_port),
                   serve(resource_server(issuer, api), api_port)]
        try:
            agent_id, agent_key = world["agent"]
            # The agent holds only its private key: no static secret, tokens live minutes.
            agent = TesseraClient(issuer, agent_id, agent_key, kid=agent_key.thumbprint(),
                                  scope="reports:read", resource=api,
                                  dpop_key=ECKey.generate_key("P-256", private=True))
            with httpx.Client(base_url=api, auth=agent.auth()) as http:
                print("agent as itself:   ", http.get("/reports").json())
                # A stolen token without the DPoP key is useless:
                stolen = agent.token().access_token
                r = httpx.get(f"{api}/reports", headers={"Authorization": f"Bearer {stolen}"})
                print("stolen as bearer:  ", r.status_code, r.headers["www-authenticate"])

            # Alice signs in (here: her own key) and hands her token to the agent.
            alice_id, alice_key = world["alice"]
            alice = TesseraClient(issuer, alice_id, alice_key, kid=alice_key.thumbprint())
            delegated = agent.exchange(alice.token().access_token, scope="reports:read",
                                       resource=api)
            with httpx.Client(base_url=api, auth=TesseraAuth(agent, delegated)) as http:
                print("agent for alice:   ", http.get("/reports").json())
        finally:
            for server in servers:
                server.should_exit = True
            time.sleep(0.3)


if __name__ == "__main__":
    main()
