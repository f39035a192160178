"""The hash chain, signed checkpoints and full verification of a stored or exported log.

Each event's hash is SHA-256 over the previous event's hash and a canonical encoding of the
event (JSON with sorted keys, no insignificant white space, UTF-8). A checkpoint is a compact
JWS by the server's signing key over `{seq, hash}` of the chain head, so a copy of the log can
be checked offline with nothing but the JWKS.

`verify_chain` reads every event (it does not stop at the first break) and names each spot:
`modified` (content or hash changed), `deleted` (a sequence number missing), `inserted` (an
event the chain does not account for), `reordered` (an event stored away from its place).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

GENESIS = "0" * 64
HASHED_FIELDS = ("seq", "id", "ts", "type", "actor", "subject", "action", "resource",
                 "outcome", "reasons", "request_id", "source", "node_id", "data")
CHECKPOINT_TYP = "tessera-audit-checkpoint+jwt"
MAX_PROBLEMS = 1000


# What `json.dumps` with these arguments builds on every call (its arguments differ from the
# defaults, so it makes a new encoder each time): built once, the encoding is the same.
_OPTIONS: dict[str, Any] = {"sort_keys": True, "separators": (",", ":"),
                            "ensure_ascii": False, "default": str}
canonical_text = json.JSONEncoder(**_OPTIONS).encode
# The same text for every finite value, refusing NaN and the infinities (which PostgreSQL's
# json type cannot hold): for data entering the log (`AuditService.event`).
finite_canonical_text = json.JSONEncoder(**_OPTIONS, allow_nan=False).encode


def canonical(event: dict[str, Any]) -> bytes:
    return canonical_text(event).encode()


def ts_text(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def chain_hash(prev_hash: str, event: dict[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(event)).hexdigest()


def hashed_part(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record.get(name) for name in HASHED_FIELDS}


@dataclass
class Checkpoint:
    seq: int
    hash: str
    jws: str


@dataclass
class VerifyReport:
    ok: bool
    checked: int
    head_seq: int
    problems: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: int = 0
    base_seq: int = 0

    @property
    def first_broken(self) -> dict[str, Any] | None:
        return self.problems[0] if self.problems else None

    def kinds(self) -> set[str]:
        return {p["problem"] for p in self.problems}

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "head_seq": self.head_seq,
                "base_seq": self.base_seq, "checkpoints_verified": self.checkpoints,
                "problems": self.problems}


def check_checkpoint(cp: Checkpoint, jwks: dict[str, Any] | None) -> str | None:
    """None when the JWS is a valid signature over exactly (seq, hash); else why not."""
    from joserfc import jws
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    if not jwks:
        return "no JWKS to check the signature with"
    try:
        keyset = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        obj = jws.deserialize_compact(cp.jws, keyset, algorithms=["ES256", "EdDSA"])
        payload = json.loads(obj.payload)
        header = obj.headers()
    except (JoseError, ValueError, TypeError) as exc:
        return f"signature does not verify ({type(exc).__name__})"
    if header.get("typ") != CHECKPOINT_TYP:
        return "not a checkpoint token"
    if payload.get("seq") != cp.seq or payload.get("hash") != cp.hash:
        return "signed content differs from the checkpoint's seq/hash"
    return None


@dataclass
class _Row:
    pos: int
    seq: int
    prev: str
    hash: str
    ok: bool  # the stored hash matches the content under its claimed seq


def verify_chain(records: Iterable[dict[str, Any]], *, head: tuple[int, str] | None,
                 checkpoints: list[Checkpoint] = (),  # type: ignore[assignment]
                 jwks: dict[str, Any] | None = None,
                 base: tuple[int, str] | None = None) -> VerifyReport:
    """Check every event, the links between them, the chain head and every checkpoint."""
    problems: list[dict[str, Any]] = []

    def report(seq: int, problem: str, detail: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append({"seq": seq, "problem": problem, "detail": detail})

    base_seq, base_hash = base or (0, GENESIS)
    rows: list[_Row] = []
    bad: dict[int, dict[str, Any]] = {}  # position -> record, for rows that fail their hash
    for pos, rec in enumerate(records):
        seq = rec.get("seq")
        if not isinstance(seq, int):
            report(-1, "modified", f"record {pos + 1} has no valid sequence number")
            continue
        prev, h = str(rec.get("prev_hash", "")), str(rec.get("hash", ""))
        ok = chain_hash(prev, hashed_part(rec)) == h
        rows.append(_Row(pos, seq, prev, h, ok))
        if not ok:
            bad[pos] = rec

    by_hash = {r.hash: r for r in rows}
    referenced = {r.prev for r in rows} | {cp.hash for cp in checkpoints}
    if head:
        referenced.add(head[1])

    # Duplicate sequence numbers: the copy nothing links to was inserted.
    claims: dict[int, list[_Row]] = {}
    for r in rows:
        claims.setdefault(r.seq, []).append(r)
    inserted: set[int] = set()
    for seq, same in claims.items():
        if len(same) > 1:
            linked = [r for r in same if r.ok and r.hash in referenced]
            keep = linked[0] if linked else same[0]
            for r in same:
                if r is not keep:
                    inserted.add(r.pos)
                    report(seq, "inserted", f"a second event claims sequence number {seq}; "
                                            "no other event links to it")

    head_seq = head[0] if head else None
    orig_cache: dict[int, int | None] = {}

    def original_seq(r: _Row, depth: int = 0) -> int | None:
        """The seq this event was written with, found through the event it links to."""
        if r.pos in orig_cache:
            return orig_cache[r.pos]
        result: int | None = None
        if r.ok:
            result = r.seq
        elif depth < 64:
            if r.prev == base_hash:
                cand: int | None = base_seq + 1
            else:
                pred = by_hash.get(r.prev)
                pred_seq = original_seq(pred, depth + 1) if pred else None
                cand = pred_seq + 1 if pred_seq is not None else None
            rec = bad.get(r.pos)
            if cand is not None and rec is not None and chain_hash(
                    r.prev, {**hashed_part(rec), "seq": cand}) == r.hash:
                result = cand
        orig_cache[r.pos] = result
        return result

    last: _Row | None = None
    last_flagged = False
    expected_seq, expected_prev = base_seq + 1, base_hash
    checked = 0
    for r in rows:
        if r.pos in inserted:
            continue
        if head_seq is not None and r.seq > head_seq:
            report(r.seq, "inserted", f"event {r.seq} lies beyond the chain head "
                                      f"({head_seq}); the chain does not account for it")
            continue
        flagged = False
        if not r.ok:
            flagged = True
            orig = original_seq(r)
            if orig is not None and orig != r.seq:
                report(r.seq, "reordered", f"the event written as number {orig} is stored "
                                           f"as number {r.seq}")
            else:
                report(r.seq, "modified", "the event's content does not match its hash")
        elif r.seq < expected_seq:
            report(r.seq, "reordered", f"event {r.seq} appears after event {expected_seq - 1}")
            continue
        elif r.seq > expected_seq:
            # Numbers stored elsewhere in the file were moved, not deleted.
            missing = [s for s in range(expected_seq, r.seq) if s not in claims]
            if missing:
                gap = (f"event {missing[0]}" if len(missing) == 1
                       else f"{len(missing)} events from {missing[0]} to {missing[-1]}")
                report(missing[0], "deleted", f"{gap} missing before event {r.seq}")
                flagged = True
        elif r.prev != expected_prev and not last_flagged:
            if last is not None and last.ok and last.hash not in referenced:
                report(last.seq, "modified", f"event {last.seq} was changed and re-hashed: "
                                             f"event {r.seq} links to a different hash")
            elif last is None:
                report(r.seq, "modified", "the first event does not link to the chain start")
            else:
                report(r.seq, "modified", f"event {r.seq} does not link to event {last.seq}")
        checked += 1
        last, last_flagged = r, flagged
        expected_seq, expected_prev = r.seq + 1, r.hash

    if head is not None:
        if head[0] > expected_seq - 1:
            gap = (f"event {head[0]}" if head[0] == expected_seq
                   else f"events {expected_seq} to {head[0]}")
            report(expected_seq, "deleted", f"{gap} missing at the end (the chain head "
                                            f"says {head[0]})")
        elif head[0] == expected_seq - 1 and last is not None and head[1] != last.hash \
                and head[0] > base_seq:
            report(last.seq, "modified", "the last event's hash differs from the chain head")

    if base_seq and not any(cp.seq == base_seq and cp.hash == base_hash
                            and check_checkpoint(cp, jwks) is None for cp in checkpoints):
        report(base_seq, "base_unverified", "retention removed events up to "
                                            f"{base_seq}, but no valid signed checkpoint "
                                            "vouches for that point")
    verified = 0
    present = {r.seq: r for r in rows if r.pos not in inserted}
    for cp in checkpoints:
        why = check_checkpoint(cp, jwks)
        if why:
            report(cp.seq, "checkpoint_invalid", f"checkpoint at {cp.seq}: {why}")
            continue
        verified += 1
        if cp.seq <= base_seq:
            continue
        covered = present.get(cp.seq)
        if covered is None:
            if not any(p["seq"] <= cp.seq and p["problem"] == "deleted" for p in problems):
                report(cp.seq, "deleted", f"event {cp.seq}, covered by a signed checkpoint, "
                                          "is missing")
        elif covered.hash != cp.hash:
            report(cp.seq, "modified", f"event {cp.seq}'s hash differs from the signed "
                                       "checkpoint: the chain was rewritten")
    problems.sort(key=lambda p: (p["seq"], p["problem"]))
    return VerifyReport(ok=not problems, checked=checked,
                        head_seq=head[0] if head else (last.seq if last else base_seq),
                        problems=problems, checkpoints=verified, base_seq=base_seq)
