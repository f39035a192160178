"""The audit seed: every event chained to the previous one; verify finds the first break."""

from __future__ import annotations

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


# Tampering with raw rows is covered in test_audit_tamper.py.


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
