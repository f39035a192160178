"""Walking skeleton: a token, an API call, an audit event."""

from fastapi.testclient import TestClient

from tessera.container import Services


def test_token_then_api_call_then_audit_event(app_client: TestClient, admin_headers: dict,
                                              services: Services) -> None:
    resp = app_client.get("/v1/identities", headers=admin_headers)
    assert resp.status_code == 200
    assert any(i["name"] == "root" for i in resp.json()["items"])
    with services.sessions() as s:
        types = [e.type for e in services.audit.events(s)]
        assert "oauth.token.issued" in types
        assert services.audit.verify(s).ok
