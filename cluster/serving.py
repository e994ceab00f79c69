"""`ctrain serve --ray`: the same application as a Ray Serve deployment of N replicas.

Each replica is the one-process server's `Served` and ASGI application (`serve.ingress`), so
requests, answers, errors, the prediction log and the metrics are the same. A new version
reaches the replicas two ways: this driver watches `CURRENT` and, when it changes, updates the
deployment's `user_config` (a lightweight update: Ray Serve calls each replica's `reconfigure`
without restarting it), which makes the replica look at once; and each replica polls too, so a
promotion is seen even if the driver is gone. Replicas swap one at a time (the store's
`serve-swap` lock): while one loads and warms up the new version, the others answer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from continual_trainer.cluster import runtime
from continual_trainer.data.errors import UserError
from continual_trainer.data.storage import Store
from continual_trainer.serve import ServeOptions

log = logging.getLogger(__name__)

APP = "ctrain"
DEPLOYMENT = "ctrain-serve"


class Replica:
    """One Ray Serve replica: a `Served` (watching `CURRENT`, swapping one replica at a time)
    and its ASGI application."""

    def __init__(self, uri: str, options: dict[str, Any]) -> None:
        import os

        from continual_trainer.serve.served import Served

        self.options = ServeOptions(**options)
        self.served = Served(
            uri,
            max(self.options.poll * 15, 30.0),  # the driver pushes; this look is for when it is gone
            self.options.log_sample,
            self.options.id_column,
            self.options.shadow,
            one_at_a_time=True,
            batch_rows=self.options.batch_rows,
            batch_wait=self.options.batch_wait,
        )
        self.served.start()
        self.pid = os.getpid()

    def __serve_build_asgi_app__(self) -> Any:
        from continual_trainer.serve.app import app

        return app(self.served, self.options.max_body, token=self.options.token, replica=self.pid)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """A push from the driver (a new `user_config`): look at `CURRENT` now."""
        self.served.wake()

    def __del__(self) -> None:
        self.served.stop()


_DEPLOYMENT: list[Any] = []


def _deployment() -> Any:
    """The Ray Serve deployment of `Replica`, made once per process."""
    from ray import serve

    if not _DEPLOYMENT:
        _DEPLOYMENT.append(serve.deployment(serve.ingress()(Replica), name=DEPLOYMENT))
    return _DEPLOYMENT[0]


def build(args: dict[str, Any]) -> Any:
    """The application, built by Ray Serve's controller from `config`'s `args`."""
    return _deployment().bind(args["uri"], args["options"])


def config(uri: str, options: ServeOptions, version: str) -> Any:
    """The application's Serve config: `options.replicas` replicas (autoscaling between them and
    `options.max_replicas` when that is given), `user_config` naming `version`. Deployed again
    with only `user_config` changed, it is a lightweight update: replicas are reconfigured, not
    restarted."""
    from ray.serve.schema import ServeDeploySchema

    scale: dict[str, Any] = (
        {"autoscaling_config": {"min_replicas": options.replicas, "max_replicas": options.max_replicas}}
        if options.max_replicas
        else {"num_replicas": options.replicas}
    )
    app = {
        "name": APP,
        "route_prefix": "/",
        "import_path": f"{__name__}:build",
        "args": {"uri": uri, "options": dataclasses.asdict(options)},
        "deployments": [
            {
                "name": DEPLOYMENT,
                "user_config": {"version": version},
                "max_ongoing_requests": 32,
                "ray_actor_options": {"num_cpus": options.replica_cpus},
                "health_check_period_s": 2,
                **scale,
            }
        ],
    }
    return ServeDeploySchema.parse_obj({"applications": [app]})


def serve_on_ray(
    uri: str,
    options: ServeOptions,
    on_ready: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the deployment on the Ray cluster (RAY_ADDRESS, or a local Ray), its HTTP proxy on
    `options.host:options.port`, until interrupted or `stop` is set; then delete it."""
    from ray import serve

    store = Store.open(uri)
    version = store.current()
    if version is None:
        raise UserError(f"{store.display}: nothing to serve (the store has no current version)")
    from ray.serve.context import _get_global_client

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines are not the user's
    runtime.connect()
    serve.start(http_options={"host": options.host, "port": options.port})
    client = _get_global_client()
    assert client is not None  # serve.start made it
    try:
        client.deploy_apps(config(uri, options, version))
        _wait_running(APP)
        if on_ready is not None:
            on_ready(version)
        stop = stop or threading.Event()
        wait = options.poll
        while not _stopped(stop, wait):
            try:
                now = store.current()
                wait = options.poll
            except UserError as exc:  # the store is unreachable for now: the replicas keep serving
                wait = min(60.0, wait * 2)
                log.warning("cannot read the store (%s); next look in %.0f s", exc, wait)
                continue
            if now is not None and now != version:
                version = now
                client.deploy_apps(config(uri, options, version))  # replicas reconfigured
    finally:
        serve.delete(APP)


def _stopped(stop: threading.Event, wait: float) -> bool:
    """Whether to stop: `stop` set within `wait` seconds, or Ctrl-C (the way a server is stopped)."""
    try:
        return stop.wait(wait)
    except KeyboardInterrupt:
        return True


def _wait_running(name: str, seconds: float = 120.0) -> None:
    """Block until the application is RUNNING; UserError if it fails to deploy."""
    from ray import serve

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = serve.status().applications.get(name)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            why = (status.message or "no reason given").strip().splitlines()[-1]
            raise UserError(f"the Ray Serve application failed to deploy ({why})")
        time.sleep(0.2)
    raise UserError(f"the Ray Serve application did not start in {seconds:.0f} s")
