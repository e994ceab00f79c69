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
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from continual_trainer.commands import check_scorable, with_predictions
from continual_trainer.data.errors import UserError
from continual_trainer.data.storage import Store
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.versions import stored_candidate

log = logging.getLogger(__name__)

MAX_BODY = 64 * 2**20  # bytes a request body may have (--max-body)
JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
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
    """

    def __init__(self, uri: str, poll: float = 2.0) -> None:
        self.store = Store.open(uri)
        self.schema = self.store.schema
        self.poll = poll
        self.current: Loaded | None = None
        self.reloads = 0
        self.refused: dict[str, str] = {}  # version -> why it could not be loaded
        self._pinned: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self, version: str) -> Loaded:
        """`version` read from the store (each file checked against its sha256), ready to score."""
        return Loaded(version, stored_candidate(self.store, version).for_scoring())

    def refresh(self) -> bool:
        """Swap in the store's current version if it changed and loads; True if it did."""
        version = self.store.current()
        if version is None or (self.current is not None and version == self.current.version):
            return False
        if version in self.refused:
            return False
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
            while not self._stop.wait(wait):
                try:
                    self.refresh()
                    wait = self.poll
                except Exception as exc:  # the store is unreachable for now: try again later
                    wait = min(60.0, wait * 2)
                    log.warning("cannot read the store (%s); next look in %.0f s", exc, wait)

        self._thread = threading.Thread(target=watch, name="ctrain-serve-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

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

    def predict(self, table: pa.Table, loaded: Loaded) -> dict[str, Any]:
        """The answer to a request for `table`'s rows by `loaded`."""
        source = "request"
        check_scorable(self.schema, table, source)
        pred = loaded.candidate.predict(self.schema.inputs(table), self.schema.n_classes)
        out = with_predictions(self.schema, table, pred, loaded.version, source)
        answer: dict[str, Any] = {"version": loaded.version, "predictions": out.column("prediction").to_pylist()}
        if not self.schema.is_regression:
            answer["probabilities"] = np.round(pred, 6).tolist()
        return answer


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


def app(served: Served, max_body: int = MAX_BODY, concurrency: int = 8, token: str | None = None) -> Any:
    """The ASGI application answering for `served`. With `token`, every request but `/health`
    needs `Authorization: Bearer <token>` (compared in constant time)."""
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

        def work() -> dict[str, Any]:
            with slots:
                chosen = served.pinned(ref) if ref else loaded
                return served.predict(rows_table(bytes(body), kind), chosen)

        try:
            answer = await run_in_threadpool(work)
        except UserError as exc:
            malformed = str(exc).startswith(("request: not valid JSON", "request: not an Arrow"))
            return error(400 if malformed else 422, str(exc)), 0
        except Exception as exc:  # not the request's fault: one line, never a traceback
            log.exception("predict failed")
            return error(500, f"the server failed to score the rows ({type(exc).__name__})"), 0
        headers = {"X-Ctrain-Version": answer["version"]}
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


def serve(
    uri: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    poll: float = 2.0,
    max_body: int = MAX_BODY,
    token: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the store's current version until interrupted (`ctrain serve`); `on_ready(version)`
    once the version is loaded and the port is free, just before the server listens."""
    import socket

    import uvicorn

    try:  # a port in use is the user's to see in one line (uvicorn would exit 3 with its own)
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise UserError.about("port", port, f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    served = Served(uri, poll)
    served.start()
    if served.current is None:
        served.stop()
        why = next(iter(served.refused.values()), "the store has no current version")
        raise UserError(f"{served.store.display}: nothing to serve ({why})")
    if on_ready is not None:
        on_ready(served.current.version)
    try:
        uvicorn.run(
            app(served, max_body, token=token), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5
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
