"""`ctrain serve`'s memory while it logs a million rows: flat, and every row in the store.

The reference network (`ctrain demo`'s store) served on 127.0.0.1 by `ctrain serve` (the
prediction log on, as by default); 4 client threads send 1,000 requests of 1,000 rows each (an
Arrow IPC stream body; at most 600 s). The server's resident memory (VmRSS) is read every
0.2 s; printed: RSS once 100,000 rows were answered (the server warm), its peak over the rest
of the run, and their ratio; then the rows the log holds in the store after the server stops,
and the rows `/metrics` counts as dropped or failed.

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
REQUESTS, ROWS = 1000, 1000


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
            [CTRAIN, "serve", "--store", store, "--port", str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        answered = [0]
        failed = [0]
        lock = threading.Lock()
        samples: list[tuple[int, int]] = []  # (rows answered, rss)
        deadline = time.monotonic() + 600
        try:
            wait(PORT)
            left = [REQUESTS]

            def client() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
                while time.monotonic() < deadline:
                    with lock:
                        if left[0] == 0:
                            return
                        left[0] -= 1
                    try:
                        conn.request("POST", "/predict", body, {"content-type": "application/vnd.apache.arrow.stream"})
                        response = conn.getresponse()
                        response.read()
                        ok = response.status == 200
                    except OSError:
                        ok = False
                        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
                    with lock:
                        answered[0] += ROWS if ok else 0
                        failed[0] += not ok

            threads = [threading.Thread(target=client) for _ in range(4)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                samples.append((answered[0], rss(proc.pid)))
                time.sleep(0.2)
            seconds = time.perf_counter() - start
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
            conn.request("GET", "/metrics")
            metrics = conn.getresponse().read().decode()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        lost = {
            outcome: int(float(line.rsplit(" ", 1)[1]))
            for line in metrics.splitlines()
            for outcome in ("dropped", "failed")
            if line.startswith(f'ctrain_log_rows_total{{outcome="{outcome}"}}')
        }
        logged = read_log(Store.open(store), [KEY])
        kept = 0 if logged is None else logged.num_rows
    warm = next(r for n, r in samples if n >= 100_000)
    peak = max(r for n, r in samples if n >= 100_000)
    ratio = peak / warm
    print(
        f"{answered[0]:,} rows answered in {seconds:.1f} s ({answered[0] / seconds:,.0f} rows/s), {failed[0]} failed "
        f"requests; server RSS {warm / 2**20:.0f} MiB at 100,000 rows, peak {peak / 2**20:.0f} MiB after: "
        f"{ratio:.3f}x; the log holds {kept:,} rows ({lost.get('dropped', 0):,} dropped, "
        f"{lost.get('failed', 0):,} failed)",
        flush=True,
    )
    emit(
        [
            check("serve: peak RSS over 1M logged rows / RSS at 100k", ratio, 1.10, "x", at_most=True),
            check("serve: rows in the log of 1M answered", kept / max(answered[0], 1), 1.0, ""),
            check("serve: failed requests while logging 1M rows", float(failed[0]), 0, "", at_most=True),
        ]
    )


if __name__ == "__main__":
    main()
