"""A small Prometheus text-format registry and its HTTP endpoint (no extra dependency)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Labels = tuple[tuple[str, str], ...]


def service_metrics() -> Metrics:
    """The registry of ``amagi serve``, with every series it publishes described."""
    m = Metrics()
    m.describe("amagi_received_bytes_total", "counter", "Bytes received by C-STORE")
    m.describe("amagi_received_instances_total", "counter", "Instances received by C-STORE")
    m.describe("amagi_jobs_total", "counter", "Jobs finished, by outcome")
    m.describe("amagi_jobs", "gauge", "Jobs in the queue, by state")
    m.describe("amagi_stage_seconds_total", "counter", "Seconds spent per pipeline stage")
    m.describe("amagi_deliveries_total", "counter", "Delivery attempts, by result")
    return m


def job_gauges(database) -> Callable[[], dict[str, dict[Labels, float]]]:
    """A collector of the ``amagi_jobs`` gauge (jobs by state) read from ``database``."""
    from db.queue import job_counts

    def collect() -> dict[str, dict[Labels, float]]:
        with database.session() as s:
            counts = job_counts(s)
        return {"amagi_jobs": {(("state", str(getattr(k, "value", k))),): float(v)
                               for k, v in counts.items()}}

    return collect


class Metrics:
    """Counters and gauges with labels; gauges may be computed at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._help: dict[str, tuple[str, str]] = {}
        self._collectors: list[Callable[[], dict[str, dict[Labels, float]]]] = []

    def describe(self, name: str, kind: str, text: str) -> None:
        self._help[name] = (kind, text)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._counters[name][key] = self._counters[name].get(key, 0.0) + value

    def add_collector(self, fn: Callable[[], dict[str, dict[Labels, float]]]) -> None:
        """``fn`` returns gauge values at scrape time (e.g. jobs by state from the database)."""
        self._collectors.append(fn)

    def render(self) -> str:
        with self._lock:
            series = {k: dict(v) for k, v in self._counters.items()}
        for fn in self._collectors:
            for name, values in fn().items():
                series.setdefault(name, {}).update(values)
        lines = []
        for name in sorted(series):
            kind, text = self._help.get(name, ("untyped", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for labels, value in sorted(series[name].items()):
                lab = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}")
        return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves ``GET /metrics`` in a background thread."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        registry = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = registry.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="amagi-metrics",
                                        daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
