"""GenAI metrics on a Prometheus scrape endpoint, right with several worker processes.

Under ``gunicorn -w N`` or ``uvicorn --workers N`` every worker sets tracing up and
records its own calls, but only one process can listen on the scrape port. So every
process renders its metrics (OpenTelemetry's ``PrometheusMetricReader`` on a private
registry) into ``<directory>/<pid>.prom`` every ``interval_s``, and whichever process
holds the port answers ``/metrics`` with the files of all live processes merged, each
sample labelled ``worker="<pid>"``. One series per worker keeps every counter monotonic
(a worker that exits takes its series with it: Prometheus marks them stale, it does not
see a reset), and PromQL aggregates them away (``sum by (...)``, as the exported rules
do). A process that finds the port taken retries at every interval, so the endpoint
moves to another worker when its holder exits. Files of dead processes are removed.
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_logger = logging.getLogger("mlflow_llmops.tracing")
WORKER_LABEL = "worker"


def default_directory(port: int) -> Path:
    """Shared by the workers of one service: one scrape port, one directory."""
    return Path(tempfile.gettempdir()) / f"mlflow-llmops-metrics-{port}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def merge_expositions(texts: dict[int, str]) -> bytes:
    """One Prometheus text exposition from several processes' ones, samples labelled
    with their process id (families with the same name are merged, as the format needs)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample

    families: dict[str, Metric] = {}
    for pid, text in sorted(texts.items()):
        for fam in text_string_to_metric_families(text):
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
            merged.samples.extend(
                Sample(s.name, {**s.labels, WORKER_LABEL: str(pid)}, s.value, s.timestamp)
                for s in fam.samples
            )

    class _Merged:
        def collect(self) -> list[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


class PrometheusEndpoint:
    """``reader`` goes to the MeterProvider; ``start()`` publishes and tries to serve."""

    def __init__(
        self,
        port: int,
        *,
        host: str = "0.0.0.0",
        directory: str | Path | None = None,
        interval_s: float = 2.0,
    ) -> None:
        try:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry
        except ImportError as e:
            from mlflow_llmops.errors import ConfigError

            raise ConfigError(
                f"tracing.metrics.prometheus_port needs the Prometheus exporter ({e.name} is "
                "missing): pip install 'mlflow-llmops[prometheus]'"
            ) from None
        self.port = port
        self.host = host
        self.directory = Path(directory) if directory else default_directory(port)
        self.interval_s = interval_s
        self.pid = os.getpid()
        self.registry = CollectorRegistry(auto_describe=False)
        self.reader = PrometheusMetricReader(registry=self.registry, disable_target_info=True)
        self._server: ThreadingHTTPServer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._bind_error_logged = False

    @property
    def serving(self) -> bool:
        """Whether this process answers the scrapes now."""
        return self._server is not None

    @property
    def _own_file(self) -> Path:
        return self.directory / f"{self.pid}.prom"

    def start(self) -> PrometheusEndpoint:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.publish()
        self._try_serve()
        self._thread = threading.Thread(target=self._run, name="llmops-prometheus", daemon=True)
        self._thread.start()
        return self

    def publish(self) -> str:
        """Write this process's metrics to its file (atomically: scrapes never see half);
        return them."""
        from prometheus_client import generate_latest

        with self._write_lock:
            data = generate_latest(self.registry)
            tmp = self.directory / f".{self.pid}.prom.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self._own_file)
        return data.decode()

    def scrape(self) -> bytes:
        """The merged exposition of every live process (this one's up to now)."""
        texts: dict[int, str] = {self.pid: self.publish()}
        for f in self.directory.glob("*.prom"):
            try:
                pid = int(f.stem)
            except ValueError:
                continue
            if pid == self.pid:
                continue
            if not _alive(pid):
                f.unlink(missing_ok=True)
                continue
            try:
                texts[pid] = f.read_text()
            except FileNotFoundError:  # its process removed it at exit meanwhile
                continue
        return merge_expositions(texts)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.publish()
                if self._server is None:
                    self._try_serve()
            except Exception:  # noqa: BLE001 - metrics must never break the service
                _logger.debug("prometheus publish failed", exc_info=True)

    def _try_serve(self) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = endpoint.scrape()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        try:
            server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as e:
            if e.errno != errno.EADDRINUSE and not self._bind_error_logged:
                self._bind_error_logged = True
                _logger.warning("prometheus endpoint %s:%d: %s", self.host, self.port, e)
            return  # another worker serves (or will): retried every interval
        server.daemon_threads = True
        self._server = server
        threading.Thread(
            target=server.serve_forever, name="llmops-prometheus-http", daemon=True
        ).start()
        _logger.info("GenAI metrics for Prometheus on http://%s:%d/metrics", self.host, self.port)

    def shutdown(self) -> None:
        """Stop publishing and serving; remove this process's file (its series go stale)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._own_file.unlink(missing_ok=True)
