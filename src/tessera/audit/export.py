"""Export the audit log as JSON Lines, and verify such an export offline.

Line 1 is a header (`kind: header`) with the chain head, the retention base and the public
JWKS of every key that signed a checkpoint; then each event (`kind: event`) followed, where
one exists, by the checkpoint signed over it (`kind: checkpoint`). Verification needs only the
file and a JWKS (the embedded one, or a trusted copy given explicitly).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

from sqlalchemy.orm import Session

from tessera.audit.chain import Checkpoint, VerifyReport, verify_chain
from tessera.audit.service import AuditService
from tessera.clock import Clock

EXPORT_VERSION = 1


def export_lines(session: Session, clock: Clock, jwks: dict[str, Any]) -> Iterator[str]:
    """Yield the JSON Lines of a full export (events streamed in batches)."""
    head = AuditService.head(session)
    base = AuditService.base(session)
    cps = {cp.seq: cp for cp in AuditService.checkpoints(session)}
    yield json.dumps({"kind": "header", "version": EXPORT_VERSION,
                      "exported_at": clock.now().isoformat(),
                      "head": {"seq": head[0], "hash": head[1]},
                      "base": {"seq": base[0], "hash": base[1]}, "jwks": jwks},
                     separators=(",", ":"))
    for cp in cps.values():
        if cp.seq <= base[0]:
            yield _cp_line(cp)
    for rec in AuditService.iter_rows(session, after=base[0]):
        yield json.dumps({"kind": "event", **rec}, separators=(",", ":"), ensure_ascii=False)
        signed = cps.get(rec["seq"])
        if signed is not None:
            yield _cp_line(signed)


def _cp_line(cp: Checkpoint) -> str:
    return json.dumps({"kind": "checkpoint", "seq": cp.seq, "hash": cp.hash, "jws": cp.jws},
                      separators=(",", ":"))


def write_export(session: Session, clock: Clock, jwks: dict[str, Any], out: IO[str]) -> int:
    count = 0
    for line in export_lines(session, clock, jwks):
        out.write(line + "\n")
        count += 1
    return count


def verify_lines(lines: Iterable[str], jwks: dict[str, Any] | None = None) -> VerifyReport:
    """Verify an export; `jwks` (trusted) overrides the one the file carries."""
    header: dict[str, Any] | None = None
    checkpoints: list[Checkpoint] = []
    bad_lines: list[int] = []

    def events() -> Iterator[dict[str, Any]]:
        nonlocal header
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad_lines.append(n)
                continue
            kind = rec.pop("kind", None) if isinstance(rec, dict) else None
            if kind == "header" and header is None:
                header = rec
            elif kind == "checkpoint":
                checkpoints.append(Checkpoint(int(rec.get("seq", -1)), str(rec.get("hash")),
                                              str(rec.get("jws"))))
            elif kind == "event":
                yield rec
            else:
                bad_lines.append(n)

    # verify_chain consumes the events first, so the header and checkpoints are read by then;
    # head and checkpoints are applied in a second step below.
    records = list(events())
    head = base = None
    if header is not None:
        h, b = header.get("head") or {}, header.get("base") or {}
        head = (int(h.get("seq", 0)), str(h.get("hash", "")))
        base = (int(b.get("seq", 0)), str(b.get("hash", ""))) if b else None
    report = verify_chain(records, head=head, checkpoints=checkpoints,
                          jwks=jwks if jwks is not None else (header or {}).get("jwks"),
                          base=base)
    if header is None:
        report.problems.insert(0, {"seq": 0, "problem": "modified",
                                   "detail": "the export has no header line"})
    for n in bad_lines:
        report.problems.append({"seq": -1, "problem": "modified",
                                "detail": f"line {n} is not a valid export record"})
    report.ok = not report.problems
    return report
