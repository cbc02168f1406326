"""A run's progress as Prometheus metrics (`humove run --metrics-port PORT`, `run.metrics_port`), for watching a
long run on a cluster in Prometheus / Grafana.

Served at `http://HOST:PORT/metrics` while the run lasts, bound to 127.0.0.1 unless `--metrics-host` (or
`run.metrics_host`) names another address. Per stage (label `stage`):

    humove_stage_running                  1 while the stage runs, else 0
    humove_stage_items                    the inputs this run works on (grows as the stage before streams more)
    humove_stage_items_skipped            the inputs earlier runs finished
    humove_stage_items_done_total         inputs finished by this run; items/s: rate(humove_stage_items_done_total[1m])
    humove_stage_records_total{status}    records written by this run, by status (ok, rejected, error)

and `humove_run_start_time_seconds`, when the run started (Unix time).
"""

from __future__ import annotations

import errno
import socket
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from humove.progress import Progress

DEFAULT_HOST = "127.0.0.1"
STATUSES = ("ok", "rejected", "error")


class MetricsPortError(ValueError):
    """The metrics endpoint cannot listen where asked (a port in use, an address not on this machine)."""

    def __init__(self, host: str, port: int, exc: OSError):
        if exc.errno == errno.EADDRINUSE:
            reason = f"port {port} is in use by another program; choose another with --metrics-port"
        else:
            reason = exc.strerror or str(exc)
        super().__init__(f"cannot serve metrics on {_address(host, port)}: {reason}")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_metrics_port(port: int, host: str = DEFAULT_HOST) -> None:
    """Raise `MetricsPortError` if the endpoint could not listen on `host:port` now: checked before a run writes
    anything, with the socket options the server uses."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise MetricsPortError(host, port, exc) from None


class PrometheusProgress(Progress):
    """Progress as Prometheus metrics in a registry of its own (a process may run several runs, or tests), served
    over HTTP from a daemon thread from construction until `close`."""

    def __init__(self, port: int, host: str = DEFAULT_HOST):
        self.registry = CollectorRegistry()
        labels = ("stage",)
        self.started = Gauge("humove_run_start_time_seconds", "when the run started (Unix time)",
                             registry=self.registry)
        self.running = Gauge("humove_stage_running", "1 while the stage runs, else 0", labels,
                             registry=self.registry)
        self.items = Gauge("humove_stage_items", "inputs this run works on (grows as the stage before streams more)",
                           labels, registry=self.registry)
        self.skipped = Gauge("humove_stage_items_skipped", "inputs earlier runs finished", labels,
                             registry=self.registry)
        self.done = Counter("humove_stage_items_done", "inputs finished by this run", labels, registry=self.registry)
        self.records = Counter("humove_stage_records", "records written by this run, by status",
                               ("stage", "status"), registry=self.registry)
        self.started.set(time.time())
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise MetricsPortError(host, port, exc) from None
        self.host, self.port = host, self._server.server_port
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://{_address(self.host, self.port)}/metrics"

    def start(self, stage: str, total: int, done: int = 0) -> None:
        self.items.labels(stage).set(total)
        self.skipped.labels(stage).set(done)
        self.running.labels(stage).set(1 if total else 0)
        self.done.labels(stage)  # present at 0 from the start, so rate() has a first sample
        for status in STATUSES:
            self.records.labels(stage, status)

    def grow(self, stage: str, items: int) -> None:
        if items:
            self.items.labels(stage).inc(items)
            self.running.labels(stage).set(1)

    def advance(self, stage: str, records: list[dict], items: int) -> None:
        self.done.labels(stage).inc(items)
        for record in records:
            self.records.labels(stage, record["status"]).inc()

    def finish(self, stage: str, summary=None) -> None:
        self.running.labels(stage).set(0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
