"""A local OTLP/HTTP (protobuf) receiver for tests and the demo: decodes what it gets.

``with OtlpReceiver() as rx: rx.traces_endpoint, rx.metrics_endpoint``; after the
exporter flushes, ``rx.spans()`` and ``rx.metrics()`` return decoded values and
``rx.requests`` the (lower-cased) headers of each request (to check auth headers).
"""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def _any_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in kvs}


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass
class ReceivedMetric:
    name: str
    unit: str
    kind: str  # histogram | sum | gauge
    points: list[dict[str, Any]] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)


class OtlpReceiver:
    """Collector stand-in speaking OTLP/HTTP protobuf on 127.0.0.1."""

    def __init__(self, port: int = 0, *, fail_status: int | None = None) -> None:
        self.trace_requests: list[ExportTraceServiceRequest] = []
        self.metric_requests: list[ExportMetricsServiceRequest] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.fail_status = fail_status
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def traces_endpoint(self) -> str:
        return self.url + "/v1/traces"

    @property
    def metrics_endpoint(self) -> str:
        return self.url + "/v1/metrics"

    def start(self) -> OtlpReceiver:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spans(self) -> list[ReceivedSpan]:
        out = []
        with self._lock:
            reqs = list(self.trace_requests)
        for req in reqs:
            for rs in req.resource_spans:
                res = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(
                            ReceivedSpan(
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                s.name,
                                attributes(s.attributes),
                                res,
                            )
                        )
        return out

    def metrics(self) -> list[ReceivedMetric]:
        out = []
        with self._lock:
            reqs = list(self.metric_requests)
        for req in reqs:
            for rm in req.resource_metrics:
                res = attributes(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        rec = ReceivedMetric(m.name, m.unit, kind or "", resource=res)
                        if kind == "histogram":
                            for p in m.histogram.data_points:
                                rec.points.append(
                                    {
                                        "attributes": attributes(p.attributes),
                                        "count": p.count,
                                        "sum": p.sum,
                                        "bounds": list(p.explicit_bounds),
                                        "bucket_counts": list(p.bucket_counts),
                                    }
                                )
                        elif kind in ("sum", "gauge"):
                            for p in getattr(m, kind).data_points:
                                rec.points.append(
                                    {
                                        "attributes": attributes(p.attributes),
                                        "value": p.as_int if p.HasField("as_int") else p.as_double,
                                    }
                                )
                        out.append(rec)
        return out


def _handler(rx: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            with rx._lock:
                rx.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            if rx.fail_status:
                return self._reply(rx.fail_status, b"")
            path = self.path.split("?", 1)[0]
            if path == "/v1/traces":
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                with rx._lock:
                    rx.trace_requests.append(req)
                return self._reply(200, ExportTraceServiceResponse().SerializeToString())
            if path == "/v1/metrics":
                req = ExportMetricsServiceRequest()
                req.ParseFromString(body)
                with rx._lock:
                    rx.metric_requests.append(req)
                return self._reply(200, ExportMetricsServiceResponse().SerializeToString())
            self._reply(404, b"")

        def _reply(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
