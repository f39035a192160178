"""Send audit events to an OpenTelemetry collector (OTLP/HTTP): one log record and one span each.

Attributes follow the OpenTelemetry semantic conventions where one exists (`event.name`,
`enduser.id`, `client.address`, `service.instance.id`, `error.type`); the rest are under
`tessera.audit.*`. The hash and sequence number travel too, so a SIEM can re-check the chain.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

SCOPE = "tessera.audit"


def attributes(rec: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "event.name": rec["type"],
        "tessera.audit.seq": rec["seq"],
        "tessera.audit.id": rec["id"],
        "tessera.audit.outcome": rec["outcome"],
        "tessera.audit.hash": rec["hash"],
        "tessera.audit.prev_hash": rec["prev_hash"],
    }
    optional = {"enduser.id": rec.get("actor"), "tessera.audit.subject": rec.get("subject"),
                "tessera.audit.action": rec.get("action"),
                "tessera.audit.resource": rec.get("resource"),
                "client.address": rec.get("source"),
                "service.instance.id": rec.get("node_id"),
                "tessera.audit.request_id": rec.get("request_id")}
    attrs.update({k: v for k, v in optional.items() if v is not None})
    if rec.get("reasons"):
        attrs["tessera.audit.reasons"] = list(rec["reasons"])
    if rec.get("outcome") == "failure":
        attrs["error.type"] = rec["type"]
    if rec.get("data"):
        attrs["tessera.audit.data"] = json.dumps(rec["data"], sort_keys=True)
    return attrs


def _nanos(ts: str) -> int:
    dt = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000) * 1000


def export_otlp(records: Iterable[dict[str, Any]], endpoint: str, *, node_id: str,
                timeout: float = 10.0) -> int:
    """Push every record as an OTLP log record and span to `endpoint` (base URL); returns count."""
    stream = OTLPStream(endpoint, node_id=node_id, timeout=timeout)
    count = 0
    try:
        for rec in records:
            stream([rec])
            count += 1
    finally:
        stream.close()
    return count


class OTLPStream:
    """An audit subscriber: every committed event goes to the collector as it happens.

    The OpenTelemetry batch processors send in the background and drop on overload, so the
    stream never slows a request; the JSON Lines export remains the complete record.
    """

    def __init__(self, endpoint: str, *, node_id: str, timeout: float = 10.0) -> None:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        base = endpoint.rstrip("/")
        resource = Resource.create({"service.name": "tessera", "service.instance.id": node_id})
        self._logs = LoggerProvider(resource=resource)
        self._logs.add_log_record_processor(BatchLogRecordProcessor(
            OTLPLogExporter(endpoint=f"{base}/v1/logs", timeout=timeout)))
        self._traces = TracerProvider(resource=resource)
        self._traces.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{base}/v1/traces", timeout=timeout)))
        self._logger = self._logs.get_logger(SCOPE)
        self._tracer = self._traces.get_tracer(SCOPE)

    def __call__(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            _emit(self._logger, self._tracer, rec)

    def flush(self) -> None:
        self._logs.force_flush()
        self._traces.force_flush()

    def close(self) -> None:
        self.flush()
        self._logs.shutdown()
        self._traces.shutdown()


def _emit(logger: Any, tracer: Any, rec: dict[str, Any]) -> None:
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.trace import SpanKind, Status, StatusCode

    ts = _nanos(rec["ts"])
    attrs = attributes(rec)
    failed = rec.get("outcome") == "failure"
    logger.emit(timestamp=ts, observed_timestamp=ts, event_name=rec["type"],
                severity_number=SeverityNumber.WARN if failed else SeverityNumber.INFO,
                severity_text="WARN" if failed else "INFO", body=rec["type"], attributes=attrs)
    span = tracer.start_span(rec["type"], kind=SpanKind.INTERNAL, start_time=ts,
                             attributes=attrs)
    if failed:
        span.set_status(Status(StatusCode.ERROR, "failure"))
    span.end(end_time=ts)
