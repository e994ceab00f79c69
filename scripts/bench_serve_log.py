"""`ctrain serve`'s memory while it logs a million rows: flat, and every row in the store.

The reference network (`ctrain demo`'s store) served on 127.0.0.1 by `ctrain serve` in one
process (`--workers 1`: the memory of the process that logs; each worker of several logs its
own share the same way) with the prediction log on, as by default; 4 client threads send 1,000
requests of 1,000 rows each (an Arrow IPC stream body; at most 600 s). The server's resident
memory (VmRSS) is read once the first 100,000 rows were answered (the server warm), then every
0.05 s; printed: that RSS, the peak over rows 100,000-500,000 and over rows 500,000-1,000,000,
and their ratio (memory that grew with the rows logged would show in it); then the rows the log
holds in the store after the server stops, and the rows `/metrics` counts as dropped or failed.

Run: .venv/bin/python scripts/bench_serve_log.py
"""

from __future__ import annotations

import http.client
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from bench_check import check, emit
from bench_serve import wait

CTRAIN = os.path.join(os.path.dirname(sys.executable), "ctrain")
PORT = 18803
REQUESTS, ROWS, WARM, FIRST = 1000, 1000, 100, 400
ARROW = "application/vnd.apache.arrow.stream"


def load(port: int, body: bytes, clients: int, requests: int, seconds: float, kind: str) -> dict:
    """`requests` POSTs of `body` from `clients` threads with keep-alive connections (bounded
    by `seconds`): requests, failures, wall time."""
    done = {"requests": 0, "failed": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                if done["requests"] >= requests:
                    return
                done["requests"] += 1
            try:
                conn.request("POST", "/predict", body, {"content-type": kind})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            if not ok:
                with lock:
                    done["failed"] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {**done, "wall": time.perf_counter() - start}


def rss(pid: int) -> int:
    """Resident memory of `pid` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from continual_trainer.data.storage import Store
    from continual_trainer.predlog import KEY, read_log

    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        subprocess.run([CTRAIN, "demo", "--store", store, "--quiet"], check=True, capture_output=True)
        batch = sorted(os.listdir(os.path.join(store, "batches")))[0]
        table = pq.read_table(os.path.join(store, "batches", batch, "data.parquet"))
        rows = table.drop(["y"])
        rows = pa.concat_tables([rows] * (ROWS // rows.num_rows + 1)).slice(0, ROWS)
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, rows.schema) as writer:
            writer.write_table(rows)
        body = sink.getvalue()
        proc = subprocess.Popen(
            [CTRAIN, "serve", "--store", store, "--port", str(PORT), "--workers", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        peaks: list[int] = []
        phases: list[dict] = []
        try:
            wait(PORT, proc)
            phases.append(load(PORT, body, 4, WARM, 120, ARROW))  # 100,000 rows: the server warm
            warm_rss = rss(proc.pid)
            for requests in (FIRST, REQUESTS - WARM - FIRST):  # rows 100k-500k, then 500k-1M
                result: dict = {}
                thread = threading.Thread(
                    target=lambda n=requests, out=result: out.update(load(PORT, body, 4, n, 600, ARROW))
                )
                thread.start()
                peak = 0
                while thread.is_alive():
                    peak = max(peak, rss(proc.pid))
                    time.sleep(0.05)
                thread.join()
                phases.append(result)
                peaks.append(peak)
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
            conn.request("GET", "/metrics")
            metrics = conn.getresponse().read().decode()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        answered = sum(p["requests"] - p["failed"] for p in phases) * ROWS
        failed = sum(p["failed"] for p in phases)
        seconds = sum(p["wall"] for p in phases)
        lost = {
            outcome: int(float(line.rsplit(" ", 1)[1]))
            for line in metrics.splitlines()
            for outcome in ("dropped", "failed")
            if line.startswith(f'ctrain_log_rows_total{{outcome="{outcome}"}}')
        }
        logged = read_log(Store.open(store), [KEY])
        kept = 0 if logged is None else logged.num_rows
    ratio = peaks[1] / peaks[0]
    print(
        f"{answered:,} rows answered in {seconds:.1f} s ({answered / seconds:,.0f} rows/s), {failed} failed "
        f"requests; server RSS {warm_rss / 2**20:.0f} MiB at 100,000 rows, peak {peaks[0] / 2**20:.0f} MiB over "
        f"rows 100,000-500,000 and {peaks[1] / 2**20:.0f} MiB over rows 500,000-1,000,000: {ratio:.3f}x; "
        f"the log holds {kept:,} rows ({lost.get('dropped', 0):,} dropped, "
        f"{lost.get('failed', 0):,} failed)",
        flush=True,
    )
    emit(
        [
            check(
                "serve: peak RSS over rows 500k-1M / over rows 100k-500k",
                ratio,
                1.10,
                "x",
                at_most=True,
                readme="serve.log.flat",
            ),
            check("serve: rows in the log of 1M answered", kept / max(answered, 1), 1.0, ""),
            check("serve: failed requests while logging 1M rows", float(failed), 0, "", at_most=True),
        ]
    )


if __name__ == "__main__":
    main()
