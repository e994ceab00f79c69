"""`ctrain serve` against the server a user would write (FastAPI + `keras.Model.predict`).

The reference network (Dense 20-10-1 over 20 numeric columns, `ctrain demo`'s store), served
on 127.0.0.1 by each side in its own process; the same client (threads with keep-alive
connections, in this process) sends the same bounded load to each, one side after the other:
- single-row requests from 32 concurrent clients (at most 4,000 requests, at most 60 s);
- 1,000-row requests from 4 concurrent clients (at most 200 requests, at most 60 s);
- ctrain alone: single rows from 8 clients for 60 s while 20 promotions alternate between
  two versions (`--poll 0.5`): failed requests, and answers naming a version that was not
  current at any moment of their request (allowing one second for the poll).
Printed per side: requests/s, rows/s, p50 and p99 latency and failed requests; the ratios
are ctrain's to the peer's. Both share these 2 cores with the client.

Run: .venv/bin/python scripts/bench_serve.py
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from bench_check import check, emit

HERE = os.path.dirname(os.path.abspath(__file__))
CTRAIN = os.path.join(os.path.dirname(sys.executable), "ctrain")


def wait(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"port {port} never became ready")


def load(port: int, body: bytes, clients: int, requests: int, seconds: float, kind: str = "application/json") -> dict:
    """`requests` POSTs of `body` (content type `kind`) from `clients` threads (bounded by
    `seconds`): latencies, failures."""
    latencies: list[float] = []
    failed = [0]
    left = [requests]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < deadline:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            start = time.perf_counter()
            try:
                conn.request("POST", "/predict", body, {"content-type": kind})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                latencies.append(time.perf_counter() - start)
                failed[0] += not ok

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.array(latencies)
    return {"requests": len(lat), "wall": wall, "rps": len(lat) / wall, "failed": failed[0],
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))}  # fmt: skip


def swaps_under_load(store: str, body: bytes, promotions: int = 20, seconds: float = 60.0) -> dict:
    """`ctrain serve` (polling every 0.5 s) under 8 clients for `seconds` (at most 200,000
    requests) while `promotions` promotions alternate between two versions: failed requests,
    and answers naming a version that was not current at any moment of their request (give or
    take the poll)."""
    import continual_trainer as ct

    api = ct.open_store(store)
    versions = [v["version"] for v in api.versions()][:2]
    proc = subprocess.Popen([CTRAIN, "serve", "--store", store, "--port", "18803", "--poll", "0.5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    answers: list[tuple[float, float, int, str]] = []
    lock = threading.Lock()
    current_since = [(0.0, api.versions()[[v["current"] for v in api.versions()].index(True)]["version"])]
    try:
        wait(18803)
        deadline = time.monotonic() + seconds
        left = [200_000]

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", 18803, timeout=30)
            while time.monotonic() < deadline:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                start = time.monotonic()
                try:
                    conn.request("POST", "/predict", body, {"content-type": "application/json"})
                    response = conn.getresponse()
                    version = json.loads(response.read()).get("version", "")
                    status = response.status
                except OSError:
                    status, version = 0, ""
                    conn = http.client.HTTPConnection("127.0.0.1", 18803, timeout=30)
                with lock:
                    answers.append((start, time.monotonic(), status, version))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for i in range(promotions):
            time.sleep(seconds / (promotions + 1))
            target = versions[i % 2] if versions[i % 2] != current_since[-1][1] else versions[(i + 1) % 2]
            api.promote(target, reason="bench_serve")
            current_since.append((time.monotonic(), target))
        for t in threads:
            t.join()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)

    def current_during(start: float, end: float, slack: float = 1.0) -> set[str]:
        out = set()
        for i, (since, version) in enumerate(current_since):
            until = current_since[i + 1][0] if i + 1 < len(current_since) else float("inf")
            if since <= end and until + slack >= start:
                out.add(version)
        return out

    failed = sum(status != 200 for _, _, status, _ in answers)
    wrong = sum(status == 200 and v not in current_during(a, b) for a, b, status, v in answers)
    ordered = [v for _, _, status, v in sorted(answers) if status == 200]
    changes = sum(a != b for a, b in itertools.pairwise(ordered))
    return {"requests": len(answers), "failed": failed, "wrong": wrong, "promotions": len(current_since) - 1,
            "changes": changes}  # fmt: skip


def main() -> None:
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        subprocess.run([CTRAIN, "demo", "--store", store, "--quiet"], check=True, capture_output=True)
        with open(os.path.join(store, "CURRENT")) as f:
            current = f.read().strip()
        member = os.path.join(store, "models", current, "member-0.keras")
        batch = sorted(os.listdir(os.path.join(store, "batches")))[0]
        table = pq.read_table(os.path.join(store, "batches", batch, "data.parquet"))
        columns = [c for c in table.column_names if c != "y"]
        rows = table.select(columns).to_pylist()
        one = json.dumps({"rows": rows[:1]}).encode()
        thousand = json.dumps({"rows": (rows * 3)[:1000]}).encode()
        sides = {
            "ctrain serve": [CTRAIN, "serve", "--store", store, "--port", "18801"],
            "FastAPI + Keras predict": [sys.executable, os.path.join(HERE, "peer_fastapi_keras.py"), "--model",
                                        member, "--columns", ",".join(columns), "--port", "18802"],
        }  # fmt: skip
        results = {}
        for (name, argv), port in zip(sides.items(), (18801, 18802), strict=True):
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait(port)
                load(port, one, 4, 40, 30)  # warm-up: first calls trace
                single = load(port, one, 32, 4000, 60)
                batch_load = load(port, thousand, 4, 200, 60)
            finally:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
            results[name] = (single, batch_load)
            print(
                f"{name:<24} single rows: {single['rps']:7.0f} req/s, p50 {single['p50'] * 1000:6.1f} ms, "
                f"p99 {single['p99'] * 1000:7.1f} ms, {single['failed']} failed of {single['requests']}; "
                f"1,000-row requests: {batch_load['rps'] * 1000:9.0f} rows/s, {batch_load['failed']} failed",
                flush=True,
            )
        swaps = swaps_under_load(store, one)
        print(
            f"ctrain serve, 8 clients for 60 s, {swaps['promotions']} promotions: {swaps['requests']} requests, "
            f"{swaps['failed']} failed, {swaps['wrong']} answered by a version not current during the request, "
            f"{swaps['changes']} changes of the answering version seen",
            flush=True,
        )
    ours, peer = results["ctrain serve"], results["FastAPI + Keras predict"]
    throughput = ours[0]["rps"] / peer[0]["rps"]
    p99 = ours[0]["p99"] / peer[0]["p99"]
    rows = ours[1]["rps"] / peer[1]["rps"]
    print(
        f"ctrain / peer: single-row throughput {throughput:.1f}x, p99 latency {p99:.2f}x, 1,000-row rows/s {rows:.1f}x"
    )
    emit(
        [
            check("serve: single-row throughput vs FastAPI + Keras predict, 32 clients", throughput, 10.0),
            check("serve: p99 latency / the peer's (single rows)", p99, 0.2, "", at_most=True),
            check("serve: rows/s with 1,000-row requests vs the peer", rows, 3.0),
            check("serve: failed requests", float(ours[0]["failed"] + ours[1]["failed"]), 0, "", at_most=True),
            check("serve: failed requests across 20 promotions", float(swaps["failed"]), 0, "", at_most=True),
            check("serve: answers by a version not current then", float(swaps["wrong"]), 0, "", at_most=True),
        ]
    )


if __name__ == "__main__":
    main()
