"""`GET /metrics`: the server's counters in Prometheus's text format, through prometheus_client.

With several workers (`ctrain serve --workers N`) each process counts into files of a shared
folder (prometheus_client's multiprocess mode: `PROMETHEUS_MULTIPROC_DIR` set before the
library is imported, which `ctrain serve` does before it starts the workers) and any worker's
`/metrics` adds them all up; gauges say how (`livesum`, `max`). In one process the counters are
ordinary ones in a registry of the server's own.

Counting happens on the request path, so the children of labelled metrics are kept per label
values (a dictionary lookup, not prometheus_client's label resolution, per request).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["ServerMetrics"]

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    """The server's metrics (see each one's help text).

    Args:
        folder: the multiprocess folder shared by the workers, or None for one process.
    """

    def __init__(self, folder: str | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()
        self.folder = folder
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ctrain_requests", "Prediction requests by version and HTTP status.", ["version", "status"], registry=r
        )
        self.rows = Counter("ctrain_rows", "Rows predicted by version.", ["version"], registry=r)
        self.seconds = Histogram(
            "ctrain_request_seconds", "Time to answer a prediction request.", buckets=BUCKETS, registry=r
        )
        self.batches = Counter("ctrain_scoring_calls", "Calls of a model (a batch of requests is one).", registry=r)
        self.reloads = Counter(
            "ctrain_reloads", "Versions loaded (the first included; summed over workers).", registry=r
        )
        self.refused = Gauge(
            "ctrain_refused_versions",
            "Versions that failed to load and are not served.",
            registry=r,
            multiprocess_mode="max",
        )
        self.log_rows = Counter(
            "ctrain_log_rows",
            "Rows of the prediction log: written to the store, dropped (queue full) or failed (store not writable).",
            ["outcome"],
            registry=r,
        )
        self.log_files = Counter("ctrain_log_files", "Files of the prediction log written.", registry=r)
        self.log_waiting = Gauge(
            "ctrain_log_rows_waiting",
            "Rows held for the prediction log's next file.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.shadow_rows = Counter(
            "ctrain_shadow_rows", "Rows the shadow candidate scored beside the served version.", ["shadow"], registry=r
        )
        self.shadow_failed = Counter(
            "ctrain_shadow_failed_rows", "Rows the shadow candidate failed to score.", ["shadow"], registry=r
        )
        self.shadow_agreeing = Counter(
            "ctrain_shadow_agreeing_rows",
            "Rows the shadow predicts as served (classification).",
            ["shadow"],
            registry=r,
        )
        self.shadow_difference = Counter(
            "ctrain_shadow_abs_difference", "Sum of |shadow - served| over rows (regression).", ["shadow"], registry=r
        )
        self._request: dict[tuple[str, int], Any] = {}
        self._rows: dict[str, Any] = {}
        self._log: dict[str, Any] = {}

    def answered(self, version: str, status: int, rows: int, seconds: float) -> None:
        """One prediction request: its version, status, rows answered and time."""
        key = (version, status)
        child = self._request.get(key)
        if child is None:
            child = self._request[key] = self.requests.labels(version, str(status))
        child.inc()
        if rows:
            counter = self._rows.get(version)
            if counter is None:
                counter = self._rows[version] = self.rows.labels(version)
            counter.inc(rows)
        self.seconds.observe(seconds)

    def logged(self, outcome: str, rows: int) -> None:
        """Rows of the prediction log `written`, `dropped` or `failed`."""
        child = self._log.get(outcome)
        if child is None:
            child = self._log[outcome] = self.log_rows.labels(outcome)
        child.inc(rows)
        if outcome == "written":
            self.log_files.inc()

    def text(self) -> bytes:
        """The exposition: this process's metrics, or every worker's added up."""
        from prometheus_client import CollectorRegistry, generate_latest

        if self.folder is None:
            return bytes(generate_latest(self.registry))
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.folder)
        return bytes(generate_latest(merged))

    def requests_by(self) -> list[tuple[str, str, int]]:
        """(version, status, requests) of every worker, as `/metrics` adds them up."""
        from prometheus_client.parser import text_string_to_metric_families

        out = []
        for family in text_string_to_metric_families(self.text().decode()):
            if family.name == "ctrain_requests":
                out += [(s.labels["version"], s.labels["status"], int(s.value)) for s in family.samples
                        if s.name == "ctrain_requests_total"]  # fmt: skip
        return sorted(out)


def multiprocess_folder() -> str | None:
    """The multiprocess folder this process's prometheus_client counts into, if any."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
