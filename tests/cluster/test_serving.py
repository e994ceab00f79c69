"""`ctrain serve --ray`: a Ray Serve deployment of two replicas, spoken to over HTTP, swapping
to a promoted version in place (reconfigured, not restarted) without failing a request."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from continual_trainer.api import open_store
from tests.conftest import make_table

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_two_replicas_answer_and_swap_to_a_promotion_in_place_without_a_failed_request(
    ray_cluster, tiny_store: str
) -> None:
    from ray import serve

    from continual_trainer.cluster.serving import serve_on_ray
    from continual_trainer.serve import ServeOptions

    store = open_store(tiny_store)
    first = store.current
    candidate = store.update("finetune_new", epochs=2, promote="never").version
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    ready, stop = threading.Event(), threading.Event()
    # replicas poll the store only every 30 s: a swap within that time came from the driver's push
    options = ServeOptions(port=port, poll=0.2, replicas=2, replica_cpus=0.5)
    driver = threading.Thread(target=serve_on_ray, args=(tiny_store, options, lambda v: ready.set(), stop))
    driver.start()
    try:
        assert ready.wait(180), "the deployment did not start"
        replicas = {_get(f"{url}/version")["replica"] for _ in range(60)}
        assert len(replicas) == 2
        rows = json.dumps({"rows": make_table(n=4, seed=3).drop(["y"]).to_pylist()}).encode()
        seen: set[str] = set()
        failed: list[str] = []

        def client() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (stop.is_set() or done.is_set()):
                request = urllib.request.Request(f"{url}/predict", rows, {"content-type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=30) as r:
                        seen.add(json.loads(r.read())["version"])
                except (urllib.error.URLError, OSError) as exc:
                    failed.append(str(exc))

        done = threading.Event()
        clients = [threading.Thread(target=client) for _ in range(2)]
        for c in clients:
            c.start()
        time.sleep(1.0)
        store.promote(candidate)
        deadline = time.monotonic() + 20
        swapped: set[tuple[int, str]] = set()
        while time.monotonic() < deadline:
            swapped = {(v["replica"], v["version"]) for v in (_get(f"{url}/version") for _ in range(12))}
            if swapped == {(r, candidate) for r in replicas}:
                break
            time.sleep(0.2)
        time.sleep(0.5)
        done.set()
        for c in clients:
            c.join()
        assert swapped == {(r, candidate) for r in replicas}  # both replicas, neither restarted
        assert failed == [] and seen == {first, candidate}
    finally:
        stop.set()
        driver.join(60)
        serve.shutdown()
