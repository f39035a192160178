"""Audit search API (filters, cursor), CLI verify/export, and the OTLP export."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tessera.audit import RequestContext
from tessera.cli.main import app as cli
from tessera.container import Services


def record(services: Services, n: int, **kw: Any) -> None:
    for i in range(n):
        with services.sessions() as s:
            services.audit.record(s, kw.get("type", "test.thing.done"), actor=kw.get("actor"),
                                  subject=kw.get("subject"), outcome=kw.get("outcome",
                                                                            "success"),
                                  ctx=RequestContext(request_id=f"r{i}"))
            s.commit()


def test_search_filters_and_cursor_pagination(services: Services, app_client: TestClient,
                                              admin_headers: dict[str, str]) -> None:
    record(services, 5, actor="idn_x", type="test.a.done")
    services.clock.advance(10)  # type: ignore[attr-defined]
    record(services, 3, subject="idn_x", type="test.b.done", outcome="failure")
    services.clock.advance(10)  # type: ignore[attr-defined]
    record(services, 4, actor="idn_y", type="test.a.done")
    q = "/v1/audit/events?identity=idn_x&limit=3"
    first = app_client.get(q, headers=admin_headers).json()
    assert len(first["items"]) == 3 and first["next_cursor"]
    seen = [e["seq"] for e in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = app_client.get(f"{q}&cursor={cursor}", headers=admin_headers).json()
        seen += [e["seq"] for e in page["items"]]
        cursor = page["next_cursor"]
    assert len(seen) == 8 and seen == sorted(seen)
    fails = app_client.get("/v1/audit/events?outcome=failure&type=test.*",
                           headers=admin_headers).json()["items"]
    assert {e["type"] for e in fails} == {"test.b.done"} and len(fails) == 3
    since = fails[-1]["ts"]
    later = app_client.get("/v1/audit/events", params={"since": since, "type": "test.a.done"},
                           headers=admin_headers).json()["items"]
    assert [e["actor"] for e in later] == ["idn_y"] * 4


@pytest.mark.parametrize("query", ["since=yesterday", "since=2026-01-01T00:00:00",
                                   "limit=0", "cursor=abc", "after=-1"])
def test_search_rejects_bad_filters(app_client: TestClient, admin_headers: dict[str, str],
                                    query: str) -> None:
    resp = app_client.get(f"/v1/audit/events?{query}", headers=admin_headers)
    assert resp.status_code == 422
    assert resp.headers["content-type"].startswith("application/problem+json")


def test_export_api_streams_a_verifiable_log(services: Services, app_client: TestClient,
                                             admin_headers: dict[str, str]) -> None:
    from tessera.audit.export import verify_lines

    record(services, 4)
    resp = app_client.get("/v1/audit/export", headers=admin_headers)
    assert resp.status_code == 200
    assert verify_lines(resp.text.splitlines(), jwks=services.keys.jwks()).ok
    assert app_client.get("/v1/audit/export").status_code == 401


def test_retention_api_needs_a_zoned_time(app_client: TestClient,
                                          admin_headers: dict[str, str]) -> None:
    resp = app_client.post("/v1/audit/retention", json={"before": "2020-01-01T00:00:00"},
                           headers=admin_headers)
    assert resp.status_code == 422
    resp = app_client.post("/v1/audit/retention", json={"before": "2020-01-01T00:00:00Z"},
                           headers=admin_headers)
    assert resp.status_code == 409


def test_cli_export_verify_and_tamper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "d"
    monkeypatch.setenv("TESSERA_DATA_DIR", str(data))
    monkeypatch.delenv("TESSERA_DATABASE_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(cli, ["init"]).exit_code == 0
    out = tmp_path / "audit.jsonl"
    res = runner.invoke(cli, ["audit", "export", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert runner.invoke(cli, ["audit", "verify"]).exit_code == 0
    jwks = tmp_path / "jwks.json"
    header = json.loads(out.read_text().splitlines()[0])
    jwks.write_text(json.dumps(header["jwks"]))
    res = runner.invoke(cli, ["audit", "verify", "--file", str(out), "--jwks", str(jwks),
                              "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["ok"]
    with sqlite3.connect(data / "tessera.db") as conn:
        conn.execute("DELETE FROM audit_events WHERE seq = 2")
    res = runner.invoke(cli, ["audit", "verify"])
    assert res.exit_code == 1
    assert "event 2: deleted" in res.output
    lines = out.read_text().splitlines()
    out.write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    res = runner.invoke(cli, ["audit", "verify", "--file", str(out)])
    assert res.exit_code == 1 and "deleted" in res.output


class OTLPReceiver:
    """A loopback stand-in for an OpenTelemetry collector's OTLP/HTTP receiver."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.requests.append((self.path, body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def collector() -> Iterator[OTLPReceiver]:
    r = OTLPReceiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def test_otlp_export_sends_logs_and_spans_with_semantic_attributes(
        services: Services, collector: OTLPReceiver) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tessera.audit.otlp import export_otlp

    with services.sessions() as s:
        services.audit.record(s, "oauth.token.refused", actor="idn_z", outcome="failure",
                              ctx=RequestContext(source="10.1.2.3"))
        s.commit()
        sent = export_otlp(services.audit.iter_rows(s), collector.url, node_id="node-test")
    assert sent == 1
    paths = {p for p, _ in collector.requests}
    assert paths == {"/v1/logs", "/v1/traces"}
    logs = ExportLogsServiceRequest()
    logs.ParseFromString(next(b for p, b in collector.requests if p == "/v1/logs"))
    rec = logs.resource_logs[0].scope_logs[0].log_records[0]
    attrs = {a.key: a.value for a in rec.attributes}
    assert attrs["event.name"].string_value == "oauth.token.refused"
    assert attrs["enduser.id"].string_value == "idn_z"
    assert attrs["client.address"].string_value == "10.1.2.3"
    assert attrs["tessera.audit.seq"].int_value == 1
    traces = ExportTraceServiceRequest()
    traces.ParseFromString(next(b for p, b in collector.requests if p == "/v1/traces"))
    span = traces.resource_spans[0].scope_spans[0].spans[0]
    assert span.name == "oauth.token.refused" and span.status.code == 2  # ERROR


def test_otlp_stream_sends_each_event_as_it_commits(services: Services,
                                                    collector: OTLPReceiver) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from tessera.audit.otlp import OTLPStream

    stream = OTLPStream(collector.url, node_id="node-test")
    services.audit.subscribe(stream)
    with services.sessions() as s:
        services.audit.record(s, "identity.identity.updated", actor="idn_admin")  # in the tx
        s.commit()
    with services.sessions() as s:
        services.audit.record(s, "authz.decision.made", actor="idn_a")  # group commit
        s.commit()
    stream.flush()
    names = []
    for path, body in collector.requests:
        if path == "/v1/logs":
            req = ExportLogsServiceRequest()
            req.ParseFromString(body)
            names += [r.event_name for rl in req.resource_logs for sl in rl.scope_logs
                      for r in sl.log_records]
    assert names == ["identity.identity.updated", "authz.decision.made"]


def test_cli_search_follow_tails_from_the_last_seen_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tessera.cli import main

    calls: list[dict[str, Any]] = []
    pages = [{"items": [{"seq": 1, "ts": "t", "type": "a.b.c", "outcome": "success",
                         "actor": "x", "subject": None, "resource": None}],
              "next_cursor": None, "last_seq": 1},
             {"items": [], "next_cursor": None, "last_seq": 1},
             {"items": [{"seq": 2, "ts": "t", "type": "a.b.d", "outcome": "failure",
                         "actor": "y", "subject": None, "resource": None}],
              "next_cursor": None, "last_seq": 2}]

    class FakeApi:
        def __init__(self, _settings: Any) -> None:
            pass

        def call(self, _method: str, _path: str, params: dict[str, Any]) -> Any:
            calls.append(dict(params))
            if not pages:
                raise KeyboardInterrupt
            return pages.pop(0)

    monkeypatch.setattr(main, "Api", FakeApi)
    monkeypatch.setattr("time.sleep", lambda _s: None)
    res = CliRunner().invoke(cli, ["audit", "search", "--follow", "--type", "a.*", "--json"])
    lines = [json.loads(line) for line in res.output.splitlines() if line.startswith("{")]
    assert [e["seq"] for e in lines] == [1, 2]
    assert [c.get("cursor") for c in calls] == [None, "1", "1", "2"]
    assert all(c["type"] == "a.*" for c in calls)
