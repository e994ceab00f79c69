"""Serving the store's current version over HTTP, reloaded when a promotion changes it.

One process (an ASGI application: Starlette, run by uvicorn; see `ctrain serve`) answers
`POST /predict` with the version current when the request arrived. A watcher thread polls
the store's `CURRENT` (with backoff while the store cannot be read); a new version is loaded
beside the old one (its files checked against their sha256), then swapped in with one
assignment: a request holds the version it started with until it ends, every answer names
its version, and a version that fails to load is refused (logged) while the old one keeps
serving. Rows are checked as `ctrain predict` checks them and scored as it scores them
(plain Dense stacks in NumPy, `trainer.light`); a mistake in a request is a 4xx with the
one line `ctrain predict` would print.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from continual_trainer.commands import check_scorable, with_predictions
from continual_trainer.data.errors import UserError
from continual_trainer.data.storage import Store
from continual_trainer.predlog import Logged, PredictionLog
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.versions import stored_candidate

log = logging.getLogger(__name__)

MAX_BODY = 64 * 2**20  # bytes a request body may have (--max-body)
JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")  # a client's X-Request-Id, used as the request's id
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds


class Metrics:
    """Counters for `GET /metrics` (Prometheus text format): requests and rows by version and
    status, and a latency histogram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.rows: dict[str, int] = {}
        self.buckets = [0] * len(BUCKETS)
        self.count, self.total = 0, 0.0

    def record(self, version: str, status: int, rows: int, seconds: float) -> None:
        with self._lock:
            self.requests[(version, status)] = self.requests.get((version, status), 0) + 1
            if status == 200:
                self.rows[version] = self.rows.get(version, 0) + rows
            for i, edge in enumerate(BUCKETS):
                if seconds <= edge:
                    self.buckets[i] += 1
            self.count, self.total = self.count + 1, self.total + seconds

    def text(self, served: Served) -> str:
        with self._lock:
            lines = [
                "# HELP ctrain_requests_total Prediction requests by version and HTTP status.",
                "# TYPE ctrain_requests_total counter",
                *(
                    f'ctrain_requests_total{{version="{v}",status="{s}"}} {n}'
                    for (v, s), n in sorted(self.requests.items())
                ),
                "# HELP ctrain_rows_total Rows predicted by version.",
                "# TYPE ctrain_rows_total counter",
                *(f'ctrain_rows_total{{version="{v}"}} {n}' for v, n in sorted(self.rows.items())),
                "# HELP ctrain_request_seconds Time to answer a prediction request.",
                "# TYPE ctrain_request_seconds histogram",
                *(f'ctrain_request_seconds_bucket{{le="{e}"}} {n}' for e, n in zip(BUCKETS, self.buckets, strict=True)),
                f'ctrain_request_seconds_bucket{{le="+Inf"}} {self.count}',
                f"ctrain_request_seconds_sum {self.total:.6f}",
                f"ctrain_request_seconds_count {self.count}",
                "# HELP ctrain_reloads_total Versions loaded (the first included).",
                "# TYPE ctrain_reloads_total counter",
                f"ctrain_reloads_total {served.reloads}",
                "# HELP ctrain_refused_versions Versions that failed to load and were not served.",
                "# TYPE ctrain_refused_versions gauge",
                f"ctrain_refused_versions {len(served.refused)}",
                *served.shadow_lines(),
                *served.log_lines(),
            ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Loaded:
    """A version ready to answer with: its id and its candidate."""

    version: str
    candidate: Candidate


class Served:
    """The version requests are answered with, and the watcher that swaps in a new one.

    Args:
        uri: the store.
        poll: seconds between looks at `CURRENT` (doubling, up to 60 s, while the store
            cannot be read).
        log_sample: the fraction of answered rows kept in the store's prediction log (0: none).
        id_column: a column of the rows whose values are their keys in the log (else each row's
            key is `<request id>-<row>`).
        shadow: a version (reference) that scores every request too, without answering.
        one_at_a_time: swap under the store's `serve-swap` lock, so that the replicas of one
            deployment never reload together (Ray Serve).
    """

    def __init__(
        self,
        uri: str,
        poll: float = 2.0,
        log_sample: float = 1.0,
        id_column: str | None = None,
        shadow: str | None = None,
        one_at_a_time: bool = False,
    ) -> None:
        self.store = Store.open(uri)
        self.one_at_a_time = one_at_a_time
        self.schema = self.store.schema
        self.poll = poll
        self.id_column = id_column
        self.current: Loaded | None = None
        self.reloads = 0
        self.refused: dict[str, str] = {}  # version -> why it could not be loaded
        self._pinned: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._sample: pa.Table | None = None  # the newest batch's first rows: a new version is warmed up on them
        self.shadow = self.load(self.store.resolve(shadow)) if shadow else None
        self.shadow_rows = self.shadow_agree = self.shadow_failed = 0
        self.shadow_abs = 0.0
        self.log = PredictionLog(self.store, self.schema, log_sample) if log_sample > 0 else None

    def load(self, version: str) -> Loaded:
        """`version` read from the store (each file checked against its sha256), warmed up on a
        few rows of the newest batch, ready to score."""
        loaded = Loaded(version, stored_candidate(self.store, version).for_scoring())
        sample = self._sample if self._sample is not None else self._newest_rows()
        if sample is not None:
            loaded.candidate.predict(self.schema.inputs(sample), self.schema.n_classes)
        return loaded

    def _newest_rows(self) -> pa.Table | None:
        """A few rows of the newest batch (to warm a version up on), or None."""
        from continual_trainer.data.parquet import table_from_bytes

        batches = self.store.batch_ids()
        if not batches:
            return None
        try:
            self._sample = table_from_bytes(self.store.read_batch(batches[-1]), batches[-1]).slice(0, 8)
        except (UserError, OSError):
            return None
        return self._sample

    def refresh(self) -> bool:
        """Swap in the store's current version if it changed and loads; True if it did."""
        version = self.store.current()
        if version is None or (self.current is not None and version == self.current.version):
            return False
        if version in self.refused:
            return False
        if self.one_at_a_time:
            with self.store.lock("serve-swap"):
                return self._swap(version)
        return self._swap(version)

    def _swap(self, version: str) -> bool:
        try:
            loaded = self.load(version)
        except Exception as exc:  # a damaged or unreadable version: the old one keeps serving
            self.refused[version] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("version %s cannot be served (%s); still serving %s", version, self.refused[version],
                      self.current.version if self.current else "nothing")  # fmt: skip
            return False
        self.current = loaded  # one assignment: a request keeps the Loaded it read
        self.reloads += 1
        log.info("serving version %s", version)
        return True

    def start(self) -> None:
        """Load the current version, then watch for promotions on a background thread."""
        self.refresh()

        def watch() -> None:
            wait = self.poll
            while not self._stop.is_set():
                self._wake.wait(wait)
                self._wake.clear()
                if self._stop.is_set():
                    return
                try:
                    self.refresh()
                    wait = self.poll
                except Exception as exc:  # the store is unreachable for now: try again later
                    wait = min(60.0, wait * 2)
                    log.warning("cannot read the store (%s); next look in %.0f s", exc, wait)

        self._thread = threading.Thread(target=watch, name="ctrain-serve-watch", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at `CURRENT` now (a push from whoever promoted), not at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Stop watching, and write what the prediction log holds."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.log is not None:
            self.log.close()

    def pinned(self, ref: str) -> Loaded:
        """A version by reference (`ctrain history` ids, `current`, `parent`), kept loaded."""
        version = self.store.resolve(ref)
        if self.current is not None and version == self.current.version:
            return self.current
        with self._lock:
            if version not in self._pinned:
                self._pinned[version] = self.load(version)
                while len(self._pinned) > 4:
                    self._pinned.popitem(last=False)
            self._pinned.move_to_end(version)
            return self._pinned[version]

    def predict(self, table: pa.Table, loaded: Loaded, request: str | None = None) -> dict[str, Any]:
        """The answer to a request for `table`'s rows by `loaded`: its version, request id, the
        rows' keys, predictions (and probabilities). Logged, and scored by the shadow too."""
        source = "request"
        check_scorable(self.schema, table, source)
        inputs = self.schema.inputs(table)
        pred = loaded.candidate.predict(inputs, self.schema.n_classes)
        out = with_predictions(self.schema, table, pred, loaded.version, source)
        request = request or uuid.uuid4().hex
        if self.id_column and self.id_column in table.column_names:
            keys = [str(k) for k in table.column(self.id_column).to_pylist()]
        else:
            keys = [f"{request}-{i}" for i in range(table.num_rows)]
        predictions = out.column("prediction").to_pylist()
        answer: dict[str, Any] = {
            "version": loaded.version,
            "request_id": request,
            "ids": keys,
            "predictions": predictions,
        }
        if not self.schema.is_regression:
            answer["probabilities"] = np.round(pred, 6).tolist()
        shadow = self._shadowed(table, inputs, predictions) if loaded is self.current else None
        if self.log is not None:
            by = self.shadow.version if shadow is not None and self.shadow is not None else None
            self.log.add(Logged(table, keys, request, time.time(), loaded.version, predictions, by, shadow))
        return answer

    def _shadowed(self, table: pa.Table, inputs: dict[str, np.ndarray], served: list[Any]) -> list[Any] | None:
        """The shadow candidate's predictions for the rows (counted against what was served), or
        None; a shadow that fails is counted, never the request's failure."""
        shadow = self.shadow
        if shadow is None or (self.current is not None and shadow.version == self.current.version):
            return None
        try:
            pred = shadow.candidate.predict(inputs, self.schema.n_classes)
            values = with_predictions(self.schema, table, pred, shadow.version, "request").column("prediction")
        except Exception as exc:
            with self._lock:
                self.shadow_failed += len(served)
            log.warning("shadow version %s failed on a request (%s)", shadow.version, exc)
            return None
        predicted = values.to_pylist()
        with self._lock:
            self.shadow_rows += len(served)
            if self.schema.is_regression:
                self.shadow_abs += float(np.sum(np.abs(np.asarray(predicted) - np.asarray(served))))
            else:
                self.shadow_agree += sum(p == s for p, s in zip(predicted, served, strict=True))
        return predicted

    def shadow_lines(self) -> list[str]:
        """`/metrics` lines for the shadow candidate (none without one)."""
        if self.shadow is None:
            return []
        v = self.shadow.version
        lines = [
            "# HELP ctrain_shadow_rows_total Rows the shadow candidate scored beside the served version.",
            "# TYPE ctrain_shadow_rows_total counter",
            f'ctrain_shadow_rows_total{{shadow="{v}"}} {self.shadow_rows}',
            f'ctrain_shadow_failed_rows_total{{shadow="{v}"}} {self.shadow_failed}',
        ]
        if self.schema.is_regression:
            mean = self.shadow_abs / self.shadow_rows if self.shadow_rows else 0.0
            name, value, help_text = "mean_abs_difference", mean, "Mean |shadow - served| prediction."
        else:
            agreement = self.shadow_agree / self.shadow_rows if self.shadow_rows else 0.0
            name, value, help_text = "agreement", agreement, "Fraction of rows the shadow predicts as served."
        return [
            *lines,
            f"# HELP ctrain_shadow_{name} {help_text}",
            f"# TYPE ctrain_shadow_{name} gauge",
            f'ctrain_shadow_{name}{{shadow="{v}"}} {value:.6f}',
        ]

    def log_lines(self) -> list[str]:
        """`/metrics` lines for the prediction log (none when it is off)."""
        if self.log is None:
            return []
        return [
            "# HELP ctrain_log_rows_total Rows of the prediction log: written to the store, dropped "
            "(queue full) or failed (store not writable).",
            "# TYPE ctrain_log_rows_total counter",
            f'ctrain_log_rows_total{{outcome="written"}} {self.log.logged}',
            f'ctrain_log_rows_total{{outcome="dropped"}} {self.log.dropped}',
            f'ctrain_log_rows_total{{outcome="failed"}} {self.log.failed}',
            f"ctrain_log_files_total {self.log.files}",
            "# HELP ctrain_log_rows_waiting Rows held for the prediction log's next file.",
            "# TYPE ctrain_log_rows_waiting gauge",
            f"ctrain_log_rows_waiting {self.log.waiting}",
        ]


def rows_table(body: bytes, kind: str = JSON) -> pa.Table:
    """The rows of a JSON body `{"rows": [{"column": value, ...}, ...]}`, or of an Arrow IPC
    stream (`kind` ARROW); UserError if not."""
    if kind == ARROW:
        try:
            table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"request: not an Arrow IPC stream ({str(exc).splitlines()[0]})") from None
        if table.num_rows == 0:
            raise UserError("request: the Arrow stream has no rows")
        return table
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"request: not valid JSON ({exc})") from None
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise UserError('request: expected {"rows": [{"column": value, ...}, ...]} with at least one row')
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise UserError(f"request: the rows do not make a table ({str(exc).splitlines()[0]})") from None


def app(
    served: Served, max_body: int = MAX_BODY, concurrency: int = 8, token: str | None = None, replica: int | None = None
) -> Any:
    """The ASGI application answering for `served`. With `token`, every request but `/health`
    needs `Authorization: Bearer <token>` (compared in constant time). `replica` (a Ray Serve
    replica's process id) is named in `/version`."""
    import hmac

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    slots = threading.BoundedSemaphore(concurrency)
    metrics = Metrics()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def refused(request: Request) -> JSONResponse | None:
        """401 unless the request carries the token (when there is one)."""
        if token is None:
            return None
        given = request.headers.get("authorization", "")
        expected = f"Bearer {token}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return None
        return JSONResponse({"error": "request: missing or wrong bearer token"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    async def predict(request: Request) -> Response:
        start = time.perf_counter()
        response, rows = await _predict(request)
        version = response.headers.get("x-ctrain-version", served.current.version if served.current else "none")
        metrics.record(version, response.status_code, rows, time.perf_counter() - start)
        return response

    async def _predict(request: Request) -> tuple[Response, int]:
        denied = refused(request)
        if denied is not None:
            return denied, 0
        loaded = served.current  # the version this request is answered with, whatever happens next
        if loaded is None:
            return error(503, "no version is loaded yet"), 0
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind not in (JSON, ARROW):
            return error(415, f"request: send rows as {JSON} or {ARROW}, not {kind or 'no content type'}"), 0
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            return error(413, f"request: body of {int(declared):,} bytes; at most {max_body:,}"), 0
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                return error(413, f"request: body over {max_body:,} bytes"), 0
        ref = request.query_params.get("version")
        given = request.headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex

        def work() -> dict[str, Any]:
            with slots:
                chosen = served.pinned(ref) if ref else loaded
                return served.predict(rows_table(bytes(body), kind), chosen, request_id)

        try:
            answer = await run_in_threadpool(work)
        except UserError as exc:
            malformed = str(exc).startswith(("request: not valid JSON", "request: not an Arrow"))
            return error(400 if malformed else 422, str(exc)), 0
        except Exception as exc:  # not the request's fault: one line, never a traceback
            log.exception("predict failed")
            return error(500, f"the server failed to score the rows ({type(exc).__name__})"), 0
        headers = {"X-Ctrain-Version": answer["version"], "X-Request-Id": request_id}
        return JSONResponse(answer, headers=headers), len(answer["predictions"])

    async def metrics_text(request: Request) -> Response:
        return refused(request) or PlainTextResponse(metrics.text(served), media_type="text/plain; version=0.0.4")

    async def status_page(request: Request) -> Response:
        denied = refused(request)
        if denied is not None:
            return denied
        from html import escape

        current = served.current
        rows = "".join(
            f"<tr><td>{escape(v)}</td><td>{s}</td><td>{n}</td></tr>" for (v, s), n in sorted(metrics.requests.items())
        )
        no = "<p>no version refused</p>"
        refusals = "".join(f"<li>{escape(v)}: {escape(w)}</li>" for v, w in served.refused.items()) or no
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>ctrain serve</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:left}</style></head>"
            f"<body><h1>ctrain serve</h1><p>store <code>{escape(served.store.display)}</code></p>"
            f"<p>serving version <b>{escape(current.version if current else 'none yet')}</b>; "
            f"{served.reloads} version(s) loaded since start</p><h2>Requests</h2>"
            f"<table><tr><th>version</th><th>status</th><th>requests</th></tr>{rows}</table>"
            f"<h2>Refused versions</h2><ul>{refusals}</ul></body></html>"
        )
        return HTMLResponse(page)

    async def health(request: Request) -> JSONResponse:
        if served.current is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "version": served.current.version})

    async def version(request: Request) -> Response:
        denied = refused(request)
        if denied is not None:
            return denied
        current = served.current
        return JSONResponse(
            {
                "version": current.version if current else None,
                "reloads": served.reloads,
                "refused": served.refused,
                "store": served.store.display,
                **({"replica": replica} if replica is not None else {}),
            }
        )

    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/health", health),
            Route("/version", version),
            Route("/metrics", metrics_text),
            Route("/", status_page),
        ]
    )


@dataclass(frozen=True)
class ServeOptions:
    """How `ctrain serve` serves: where it listens, how often it looks for a promotion, the
    largest body, the bearer token, the prediction log's sample and key column, a shadow
    candidate; whether on Ray Serve (None: if RAY_ADDRESS is set), and there the replicas (a
    fixed number, or autoscaling up to `max_replicas`) and the CPUs each reserves."""

    host: str = "127.0.0.1"
    port: int = 8000
    poll: float = 2.0
    max_body: int = MAX_BODY
    token: str | None = None
    log_sample: float = 1.0
    id_column: str | None = None
    shadow: str | None = None
    ray: bool | None = None
    replicas: int = 1
    max_replicas: int | None = None
    replica_cpus: float = 1.0

    def on_ray(self) -> bool:
        import os

        return self.ray if self.ray is not None else bool(os.environ.get("RAY_ADDRESS"))


def serve(uri: str, options: ServeOptions, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the store's current version until interrupted (`ctrain serve`); `on_ready(version)`
    once the version is loaded and the port is free, just before the server listens."""
    import socket

    import uvicorn

    host, port = options.host, options.port
    if options.max_replicas is not None and options.max_replicas < options.replicas:
        raise UserError(f"--max-replicas {options.max_replicas} is below --replicas {options.replicas}")
    try:  # a port in use is the user's to see in one line (uvicorn would exit 3 with its own)
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise UserError.about("port", port, f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    if options.on_ray():
        from continual_trainer.cluster.serving import serve_on_ray

        serve_on_ray(uri, options, on_ready)
        return
    served = Served(uri, options.poll, options.log_sample, options.id_column, options.shadow)
    served.start()
    if served.current is None:
        served.stop()
        why = next(iter(served.refused.values()), "the store has no current version")
        raise UserError(f"{served.store.display}: nothing to serve ({why})")
    if on_ready is not None:
        on_ready(served.current.version)
    try:
        uvicorn.run(
            app(served, options.max_body, token=options.token),
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    finally:
        served.stop()


def wait_ready(url: str, seconds: float = 30.0) -> None:
    """Block until `url`/health answers 200 (for tests and scripts); TimeoutError if not."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not become ready in {seconds:.0f} s")
