"""Serving the store's current version over HTTP, reloaded when a promotion changes it.

Rooms: `edge` types a request's rows once (the store's canonical types, the rule `ctrain
predict` reads by); `scoring` scores a version the fastest way it allows and batches requests
that arrive together; `served` holds the version answering and the watcher that swaps in a
promoted one, and builds each answer (and hands its rows to the prediction log); `app` is the
ASGI application with its middleware; `metrics` the Prometheus counters; `server` runs it all in
one process or as N uvicorn workers (`ctrain serve`). Serving imports nothing of training.
"""

from __future__ import annotations

from continual_trainer.serve.server import ServeOptions, cores, serve, wait_ready

__all__ = ["ServeOptions", "cores", "serve", "wait_ready"]
