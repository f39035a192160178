"""The audit seed: every event chained to the previous one; verify finds the first break."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tessera.audit import RequestContext
from tessera.container import Services


def write_events(services: Services, n: int = 5) -> None:
    with services.sessions() as s:
        for i in range(n):
            services.audit.record(s, "test.event.recorded", actor="t", subject=f"s{i}",
                                  ctx=RequestContext(request_id=f"r{i}", source="127.0.0.1"),
                                  data={"i": i, "nested": {"b": [1, 2], "a": "é"}})
        s.commit()


def verify(services: Services) -> dict:
    with services.sessions() as s:
        report = services.audit.verify(s)
    return {"ok": report.ok, "checked": report.checked, "first": report.first_broken}


def raw(services: Services, sql: str) -> None:
    with services.engine.begin() as conn:
        conn.execute(text(sql))


def test_intact_chain_verifies(services: Services) -> None:
    write_events(services)
    assert verify(services) == {"ok": True, "checked": 5, "first": None}


def test_events_link_to_their_predecessor(services: Services) -> None:
    write_events(services, 3)
    with services.sessions() as s:
        rows = services.audit.events(s)
    assert rows[0].prev_hash == "0" * 64
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
    assert [r.seq for r in rows] == [1, 2, 3]


@pytest.mark.parametrize("case, sql, seq, problem", [
    ("finds a modified field", "UPDATE audit_events SET outcome = 'failure' WHERE seq = 3", 3,
     "modified"),
    ("finds modified data", "UPDATE audit_events SET subject = 'other' WHERE seq = 2", 2,
     "modified"),
    ("finds a deleted event", "DELETE FROM audit_events WHERE seq = 2", 2, "deleted"),
    ("finds a deleted tail", "DELETE FROM audit_events WHERE seq = 5", 5, "truncated"),
    ("finds a rewritten link", "UPDATE audit_events SET prev_hash = hash WHERE seq = 4", 4,
     "broken_link"),
])
def test_tampering_is_found(services: Services, case: str, sql: str, seq: int,
                            problem: str) -> None:
    write_events(services)
    raw(services, sql)
    result = verify(services)
    assert not result["ok"]
    assert (result["first"]["seq"], result["first"]["problem"]) == (seq, problem)


def test_concurrent_appenders_form_one_chain(services: Services) -> None:
    import threading

    def worker(k: int) -> None:
        for i in range(10):
            with services.sessions() as s:
                services.audit.record(s, "test.event.recorded", subject=f"{k}-{i}")
                s.commit()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify(services) == {"ok": True, "checked": 40, "first": None}
