"""`ctrain serve`: the options, and the server run in this process or as N worker processes.

One uvicorn worker answers on one core; `--workers N` (default: this machine's cores) runs N of
them sharing the port (uvicorn's supervisor: each worker is a process of its own with its own
`Served`, each polls `CURRENT` and reloads on promotion, each writes its own prediction log
files). `/metrics` adds the workers' counters up (prometheus_client's multiprocess mode). With
several workers TensorFlow's thread pools are sized to the cores each worker has, unless
`TF_NUM_INTRAOP_THREADS` says otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from continual_trainer.data.errors import TerminalFormatter, UserError

__all__ = ["ServeOptions", "cores", "serve", "wait_ready"]

log = logging.getLogger("continual_trainer.serve")

MIN_POLL = 0.1  # seconds: a faster look at CURRENT would spin a core on an object store
WORKER_CONFIG = "CTRAIN_SERVE_WORKER"  # the file a worker reads its store and options from


def cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ServeOptions:
    """How `ctrain serve` serves: where it listens, how often it looks for a promotion, the
    largest body, the bearer token, the prediction log's sample and key column, a shadow
    candidate; the worker processes (None: one per core) and the batching of requests that
    arrive together (the most rows per model call, the longest a request waits for company);
    whether on Ray Serve (None: if RAY_ADDRESS is set), and there the replicas (a fixed number,
    or autoscaling up to `max_replicas`) and the CPUs each reserves."""

    host: str = "127.0.0.1"
    port: int = 8000
    poll: float = 2.0
    max_body: int = 64 * 2**20
    token: str | None = None
    log_sample: float = 1.0
    id_column: str | None = None
    shadow: str | None = None
    workers: int | None = None
    batch_rows: int = 64
    batch_wait: float = 0.0
    ray: bool | None = None
    replicas: int = 1
    max_replicas: int | None = None
    replica_cpus: float = 1.0

    def __post_init__(self) -> None:
        checks: list[tuple[str, Any, bool, str]] = [
            ("port", self.port, isinstance(self.port, int) and 1 <= self.port <= 65535, "a port is 1 to 65535"),
            ("poll", self.poll, self.poll >= MIN_POLL, f"at least {MIN_POLL} seconds"),
            ("max_body", self.max_body, self.max_body >= 1, "at least 1 byte"),
            ("log_sample", self.log_sample, 0.0 <= self.log_sample <= 1.0, "a fraction from 0 to 1"),
            ("workers", self.workers, self.workers is None or 1 <= self.workers <= 64, "1 to 64"),
            ("batch_rows", self.batch_rows, 1 <= self.batch_rows <= 100_000, "1 to 100,000"),
            ("batch_wait", self.batch_wait, 0.0 <= self.batch_wait <= 1.0, "0 to 1 second"),
            ("replicas", self.replicas, self.replicas >= 1, "at least 1"),
            ("replica_cpus", self.replica_cpus, self.replica_cpus > 0, "more than 0"),
        ]
        for name, value, ok, rule in checks:
            if not ok:
                raise UserError.about(name, value, rule)
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise UserError.about("max_replicas", self.max_replicas, f"is below replicas={self.replicas}")

    def on_ray(self) -> bool:
        return self.ray if self.ray is not None else bool(os.environ.get("RAY_ADDRESS"))

    @property
    def processes(self) -> int:
        """The worker processes to run (one per core unless told)."""
        return self.workers or cores()


def serve(uri: str, options: ServeOptions, on_ready: Callable[[str], None] | None = None, console: bool = True) -> None:
    """Serve the store's current version until interrupted (`ctrain serve`); `on_ready(version)`
    once the version is loaded and the server answers. With `console`, a line on standard error
    for each version swapped in or refused, and when the server stops."""
    import socket

    host, port = options.host, options.port
    try:  # a port in use is the user's to see in one line (uvicorn would exit 3 with its own)
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise UserError.about("port", port, f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    if options.on_ray():
        from continual_trainer.cluster.serving import serve_on_ray

        serve_on_ray(uri, options, on_ready)
        return
    with _console(console):
        if options.processes == 1:
            _serve_here(uri, options, on_ready)
        else:
            _serve_workers(uri, options, on_ready, console)
        log.info("stopped")


def _served(uri: str, options: ServeOptions, metrics: Any) -> Any:
    from continual_trainer.serve.served import Served

    return Served(
        uri,
        options.poll,
        options.log_sample,
        options.id_column,
        options.shadow,
        batch_rows=options.batch_rows,
        batch_wait=options.batch_wait,
        metrics=metrics,
    )


def _serve_here(uri: str, options: ServeOptions, on_ready: Callable[[str], None] | None) -> None:
    import uvicorn

    from continual_trainer.serve.app import app
    from continual_trainer.serve.metrics import ServerMetrics

    served = _served(uri, options, ServerMetrics())
    try:
        served.start()
        if served.current is None:
            why = next(iter(served.refused.values()), "the store has no current version")
            raise UserError(f"{served.store.display}: nothing to serve ({why})")
        if on_ready is not None:
            on_ready(served.current.version)
        uvicorn.run(app(served, options.max_body, token=options.token), **_uvicorn(options))
    finally:
        served.stop()


def _serve_workers(uri: str, options: ServeOptions, on_ready: Callable[[str], None] | None, console: bool) -> None:
    """Run `options.processes` workers (uvicorn's supervisor) until interrupted."""
    import tempfile

    import uvicorn

    from continual_trainer.data.storage import Store
    from continual_trainer.versions import stored_candidate

    store = Store.open(uri)
    version = store.current()
    if version is None:
        raise UserError(f"{store.display}: nothing to serve (the store has no current version)")
    stored_candidate(store, version)  # its files, checked against their sha256 before any worker starts
    n = options.processes
    with tempfile.TemporaryDirectory(prefix="ctrain-serve-") as tmp:
        ready = os.path.join(tmp, "ready")
        metrics = os.path.join(tmp, "metrics")
        os.mkdir(ready)
        os.mkdir(metrics)
        config = os.path.join(tmp, "worker.json")
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # the token is in it
        with os.fdopen(fd, "w") as f:
            json.dump({"uri": uri, "options": dataclasses.asdict(options), "ready": ready, "console": console}, f)
        environ = {WORKER_CONFIG: config, "PROMETHEUS_MULTIPROC_DIR": metrics}
        threads = str(max(1, cores() // n))
        environ.update({k: os.environ.get(k, threads) for k in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")})
        saved = {k: os.environ.get(k) for k in environ}
        os.environ.update(environ)
        failed: list[str] = []
        watcher = threading.Thread(target=_wait_workers, args=(ready, n, on_ready, failed), daemon=True)
        watcher.start()
        try:
            uvicorn.run(f"{__name__}:worker", factory=True, workers=n, **_uvicorn(options))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        if failed:
            raise UserError(f"{store.display}: nothing to serve ({failed[0]})")


def _uvicorn(options: ServeOptions) -> dict[str, Any]:
    """uvicorn's settings, the same in one process and with workers (its access log off: the
    metrics count requests; a request's errors are logged by the application)."""
    return {"host": options.host, "port": options.port, "log_level": "warning", "access_log": False,
            "timeout_graceful_shutdown": 5}  # fmt: skip


def _wait_workers(folder: str, n: int, on_ready: Callable[[str], None] | None, failed: list[str]) -> None:
    """Call `on_ready` once every worker has loaded the version; stop the server if one could not."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        names = os.listdir(folder)
        bad = [name for name in names if name.endswith(".failed")]
        if bad:
            with open(os.path.join(folder, bad[0]), encoding="utf-8") as f:
                failed.append(f.read().strip())
            os.kill(os.getpid(), signal.SIGINT)  # the supervisor stops the workers
            return
        done = [name for name in names if name.endswith(".ready")]
        if len(done) >= n:
            if on_ready is not None:
                with open(os.path.join(folder, done[0]), encoding="utf-8") as f:
                    on_ready(f.read().strip())
            return
        time.sleep(0.1)


def worker() -> Any:
    """One worker's application (uvicorn imports this in each worker process)."""
    from continual_trainer.serve.app import app
    from continual_trainer.serve.metrics import ServerMetrics, multiprocess_folder

    with open(os.environ[WORKER_CONFIG], encoding="utf-8") as f:
        config = json.load(f)
    _console(config["console"]).__enter__()  # for the worker's life
    options = ServeOptions(**config["options"])
    served = _served(config["uri"], options, ServerMetrics(multiprocess_folder()))
    served.start()
    name = os.path.join(config["ready"], str(os.getpid()))
    if served.current is None:
        why = next(iter(served.refused.values()), "the store has no current version")
        with open(f"{name}.failed", "w", encoding="utf-8") as f:
            f.write(why)
        served.stop()
        raise SystemExit(f"nothing to serve ({why})")
    with open(f"{name}.ready", "w", encoding="utf-8") as f:
        f.write(served.current.version)
    return app(served, options.max_body, token=options.token, own=True)


class _console:
    """The server's lines (reloads, refused versions, the stop) on standard error while it runs;
    without `show`, only errors (a version refused)."""

    def __init__(self, show: bool = True) -> None:
        self.show = show

    def __enter__(self) -> _console:
        self.logger = logging.getLogger("continual_trainer.serve")
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(TerminalFormatter(f"ctrain serve [{os.getpid()}]: %(message)s"))
        self.handler.setLevel(logging.INFO if self.show else logging.ERROR)
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        self.logger.propagate = True


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
