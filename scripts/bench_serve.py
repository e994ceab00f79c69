"""`ctrain serve` against a competent hand-written server and against its HTTP stack's ceiling.

Every server runs on 127.0.0.1 with as many uvicorn workers as `ctrain serve` uses (one per
core), the same uvicorn (httptools, uvloop), the same TensorFlow thread pools (one thread each
per worker), and is driven by the same load generator written in C, `wrk` (keep-alive, 2
threads): single-row JSON bodies from 32 connections, 1,000-row bodies from 8, each for a fixed
time after a short warm-up. The servers take turns (interleaved, `--rounds` times; the median
counts):
- `ctrain serve --store S` with its defaults (prediction log on, batching on), and with batching
  off (`--batch-rows 1`);
- the competent peer (scripts/peer_serve.py): Starlette + uvicorn, the model loaded with Keras
  and called through one `tf.function` with an input signature, in the event loop and in the
  threadpool, parsing and answering with orjson (the better of the two variants counts);
- the ceiling: the same Starlette app parsing the JSON body with orjson and answering a constant
  of the same shape (what this HTTP stack carries with no model at all);
- footnotes: the peer with the standard library's JSON, and `model.predict` per request in an
  `async def` handler (what tutorials show; Keras's documentation advises against it).
Three models: the reference network (Dense 20-10-1 over 20 numeric columns, `ctrain demo`'s
store), a model built the Keras way (examples/census.py: one input per column, adapted
`Normalization`, `StringLookup`, `IntegerLookup`) and a small CNN on 8x8 digits
(examples/digits.py).

Then, on the reference store: 20 promotions under load (8 Python clients for 40 s: failed
requests, answers by a version that was not current), and a fuzz of odd but answerable values
(booleans, integers and digit strings for numbers, dictionary and large strings in Arrow
bodies, nulls) from 8 clients on the Keras-way store: rows answered 200 against rows in the log
after the server stops, and the commands that read the log afterwards.

Needs `wrk` (Debian: `apt-get install wrk`). Run: .venv/bin/python scripts/bench_serve.py [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pyarrow as pa
import pyarrow.parquet as pq
from bench_check import check, emit

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
CTRAIN = os.path.join(BIN, "ctrain")
PEER = os.path.join(HERE, "peer_serve.py")
sys.path.insert(0, ROOT)


def wait(port: int, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"port {port} never became ready")


def wrk(port: int, script: str, connections: int, seconds: float) -> dict[str, float]:
    """One wrk run: requests/s, p99 latency (seconds), non-2xx answers and socket errors."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", script, f"http://127.0.0.1:{port}/predict"],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "p99": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
        "failed": float(bad.group(1) if bad else 0) + (sum(map(float, errors.groups())) if errors else 0),
    }


def lua(folder: str, name: str, body: bytes) -> str:
    """A wrk script POSTing `body` as JSON."""
    data = os.path.join(folder, f"{name}.json")
    with open(data, "wb") as f:
        f.write(body)
    script = os.path.join(folder, f"{name}.lua")
    with open(script, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f'local f = io.open("{data}", "rb")\nwrk.body = f:read("*a")\nf:close()\n')  # fmt: skip
    return script


def measure(argv: list[str], port: int, scripts: tuple[str, str], seconds: float, env: dict[str, str]) -> dict:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait(port, proc)
        wrk(port, scripts[0], 4, 2)  # warm-up: first calls trace, caches fill
        wrk(port, scripts[1], 2, 2)
        single = wrk(port, scripts[0], 32, seconds)
        rows = wrk(port, scripts[1], 8, seconds)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"rps": single["rps"], "p99": single["p99"], "rows": rows["rps"] * 1000,
            "failed": single["failed"] + rows["failed"]}  # fmt: skip


def median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def stores(tmp: str) -> dict[str, dict[str, Any]]:
    """The three stores: their folder, member file, feature columns and a table of their rows."""
    from examples.census import census, keras_way_model

    out: dict[str, dict[str, Any]] = {}
    ref = os.path.join(tmp, "reference")
    subprocess.run([CTRAIN, "demo", "--store", ref, "--quiet"], check=True, capture_output=True)
    out["reference"] = {"store": ref}

    keras_store = os.path.join(tmp, "keras-way")
    table = census(3000, 0)
    pq.write_table(table, os.path.join(tmp, "census.parquet"))
    model = keras_way_model(table)
    model.save(os.path.join(tmp, "census.keras"))
    census_file, census_model = os.path.join(tmp, "census.parquet"), os.path.join(tmp, "census.keras")
    argv = [CTRAIN, "init", "--store", keras_store, "--data", census_file, "--label", "y", "--model", census_model]
    subprocess.run([*argv, "--quiet"], check=True, capture_output=True)
    out["keras-way"] = {"store": keras_store}

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = pa.array([list(map(float, row)) for row in digits.data], pa.list_(pa.float64()))
    pq.write_table(pa.table({"image": images, "y": digits.target}), os.path.join(tmp, "digits.parquet"))
    cnn_store = os.path.join(tmp, "cnn")
    subprocess.run([CTRAIN, "init", "--store", cnn_store, "--data", os.path.join(tmp, "digits.parquet"), "--label",
                    "y", "--model", "examples.digits:cnn", "--shape", "image=8,8,1", "--epochs", "5", "--quiet"],
                   check=True, capture_output=True, cwd=ROOT)  # fmt: skip
    out["cnn"] = {"store": cnn_store}
    for entry in out.values():
        s = entry["store"]
        with open(os.path.join(s, "CURRENT")) as f:
            current = f.read().strip()
        entry["member"] = os.path.join(s, "models", current, "member-0.keras")
        with open(os.path.join(s, "store.json")) as f:
            entry["columns"] = [c["name"] if isinstance(c, dict) else c for c in json.load(f)["columns"]]
        batch = sorted(os.listdir(os.path.join(s, "batches")))[0]
        entry["table"] = pq.read_table(os.path.join(s, "batches", batch, "data.parquet")).select(entry["columns"])
    return out


def bodies(table: pa.Table) -> tuple[bytes, bytes]:
    rows = table.to_pylist()
    return json.dumps({"rows": rows[:1]}).encode(), json.dumps(
        {"rows": (rows * (1 + 1000 // len(rows)))[:1000]}
    ).encode()


def promotions_under_load(store: str, body: bytes, promotions: int = 20, seconds: float = 40.0) -> dict:
    """`ctrain serve` (its default workers, polling every 0.2 s) under 8 Python clients for
    `seconds` (at most 200,000 requests) while `promotions` promotions alternate between two
    versions: failed requests, and answers naming a version that was not current at any moment
    of their request (give or take a second for the poll)."""
    import continual_trainer as ct

    api = ct.open_store(store)
    versions = [v["version"] for v in api.versions()][:2]
    current = next(v["version"] for v in api.versions() if v["current"])
    port = 18890
    proc = subprocess.Popen([CTRAIN, "serve", "--store", store, "--port", str(port), "--poll", "0.2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    answers: list[tuple[float, float, int, str]] = []
    lock = threading.Lock()
    since = [(0.0, 0.0, current)]  # (promote called, promote returned, the version it made current)
    try:
        wait(port, proc)
        deadline = time.monotonic() + seconds
        left = [200_000]

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
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
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                with lock:
                    answers.append((start, time.monotonic(), status, version))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for _ in range(promotions):
            time.sleep(seconds / (promotions + 1))
            target = versions[0] if since[-1][2] != versions[0] else versions[1]
            called = time.monotonic()
            api.promote(target, reason="bench_serve")
            since.append((called, time.monotonic(), target))
        for t in threads:
            t.join()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)

    def current_during(start: float, end: float, slack: float = 1.0) -> set[str]:
        """The versions current at some moment of [start, end]: a version is current from the
        moment its promotion was called until the next promotion returned (plus the poll's slack)."""
        out = set()
        for i, (called, _, version) in enumerate(since):
            until = since[i + 1][1] if i + 1 < len(since) else float("inf")
            if called <= end and until + slack >= start:
                out.add(version)
        return out

    failed = sum(status != 200 for _, _, status, _ in answers)
    wrong = sum(status == 200 and v not in current_during(a, b) for a, b, status, v in answers)
    return {"requests": len(answers), "failed": failed, "wrong": wrong, "promotions": len(since) - 1}


def odd_rows(rng: random.Random, table: pa.Table, n: int) -> list[dict[str, Any]]:
    """Rows of `table` with odd but answerable values: numbers as booleans, integers or text,
    now and then a null (which makes the request a 422)."""
    out = []
    for row in table.slice(rng.randrange(table.num_rows - n), n).to_pylist():
        for k, v in row.items():
            if isinstance(v, float):
                row[k] = rng.choice([v, int(v), f"{v}", f" {v:.3e} ", bool(v > 0) if k == "hours" else v])
            if rng.random() < 0.002:
                row[k] = None
        out.append(row)
    return out


def arrow_body(table: pa.Table, rng: random.Random) -> bytes:
    city = table.column("city")
    encoded = rng.choice([city.dictionary_encode(), city.cast(pa.large_string()), city])
    table = table.set_column(table.column_names.index("city"), "city", encoded)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def fuzz(store: str, table: pa.Table, clients: int = 8, requests: int = 400) -> dict:
    """Odd bodies from `clients` clients (at most `requests` each, 60 s in all) to `ctrain serve`:
    rows answered 200, rows in the log once the server stopped, and whether each command that
    reads the log then succeeds."""
    from continual_trainer.data.storage import Store
    from continual_trainer.predlog import KEY, read_log

    before = set(Store.open(store).prediction_logs())
    port = 18891
    proc = subprocess.Popen([CTRAIN, "serve", "--store", store, "--port", str(port), "--id-column", "id"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    answered = [0]
    statuses: dict[int, int] = {}
    keys: list[str] = []
    lock = threading.Lock()
    try:
        wait(port, proc)
        deadline = time.monotonic() + 60

        def client(seed: int) -> None:
            rng = random.Random(seed)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for i in range(requests):
                if time.monotonic() > deadline:
                    return
                n = rng.choice([1, 1, 3, 50])
                if rng.random() < 0.3:
                    part = table.slice(rng.randrange(table.num_rows - n), n)
                    part = part.append_column("id", pa.array([f"c{seed}-{i}-{j}" for j in range(n)]))
                    body, kind = arrow_body(part, rng), "application/vnd.apache.arrow.stream"
                else:
                    rows = odd_rows(rng, table, n)
                    for j, row in enumerate(rows):
                        row["id"] = rng.choice([f"c{seed}-{i}-{j}", seed * 10**7 + i * 100 + j])
                    body, kind = json.dumps({"rows": rows}).encode(), "application/json"
                conn.request("POST", "/predict", body, {"content-type": kind})
                response = conn.getresponse()
                answer = json.loads(response.read())
                with lock:
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    if response.status == 200:
                        answered[0] += len(answer["predictions"])
                        keys.extend(answer["ids"][:1])

        threads = [threading.Thread(target=client, args=(s,)) for s in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    written = [name for name in Store.open(store).prediction_logs() if name not in before]
    logged = read_log(Store.open(store), [KEY], written)
    labels = os.path.join(os.path.dirname(store), "fuzz-labels.parquet")
    pq.write_table(pa.table({"id": keys, "y": [1] * len(keys)}), labels)
    commands = {
        "drift --served": [CTRAIN, "drift", "--store", store, "--served"],
        "label": [CTRAIN, "label", "--store", store, "--data", labels, "--key", "id"],
        "stream --watch-served": [CTRAIN, "stream", "--store", store, "--inbox", os.path.join(os.path.dirname(store),
                                  "empty-inbox"), "--once", "--watch-served", "--policy", "keep"],
    }  # fmt: skip
    os.makedirs(os.path.join(os.path.dirname(store), "empty-inbox"), exist_ok=True)
    ran = {name: subprocess.run(argv, capture_output=True, text=True).returncode for name, argv in commands.items()}
    return {"answered": answered[0], "logged": logged.num_rows if logged is not None else 0, "statuses": statuses,
            "commands": ran}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=8, help="each wrk run's length")
    p.add_argument("--rounds", type=int, default=2, help="turns of the reference model's servers (median counts)")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench_serve.py needs wrk, a load generator written in C: apt-get install wrk")
    from continual_trainer.serve import cores

    workers = str(cores())
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        made = stores(tmp)
        for model, entry in made.items():
            one, thousand = bodies(entry["table"])
            scripts = (lua(tmp, f"{model}-one", one), lua(tmp, f"{model}-thousand", thousand))
            cols = ",".join(entry["columns"])

            def peer(mode: str, parser: str, port: int) -> list[str]:
                return [sys.executable, PEER, "--model", entry["member"], "--columns", cols, "--mode", mode,  # noqa: B023
                        "--json", parser, "--port", str(port), "--workers", workers]  # fmt: skip

            serve = [CTRAIN, "serve", "--store", entry["store"], "--port"]
            sides: dict[str, Any] = {
                "ctrain serve": lambda port: [*serve, str(port)],  # noqa: B023
                "ctrain serve, batching off (--batch-rows 1)": lambda port: [*serve, str(port), "--batch-rows", "1"],  # noqa: B023
                "peer, tf.function in the event loop": lambda port: peer("loop", "orjson", port),
                "peer, tf.function in the threadpool": lambda port: peer("thread", "orjson", port),
            }
            if model == "reference":
                sides["ceiling: parse the JSON, answer a constant"] = lambda port: peer("constant", "orjson", port)
                sides["footnote: peer with the standard library's json"] = lambda port: peer("loop", "stdlib", port)
                sides["footnote: model.predict per request"] = lambda port: peer("predict", "stdlib", port)
            rounds = args.rounds if model == "reference" else 1
            runs: dict[str, list[dict]] = {name: [] for name in sides}
            for r in range(rounds):
                for i, (name, argv) in enumerate(sides.items()):
                    port = 18800 + 10 * r + i
                    runs[name].append(measure(argv(port), port, scripts, args.seconds, env))
                    m = runs[name][-1]
                    line = f"{model:<10} {name:<48} {m['rps']:8.0f} req/s  p99 {m['p99'] * 1000:7.1f} ms  "
                    print(f"{line}{m['rows']:9.0f} rows/s (1,000-row bodies)  {m['failed']:.0f} failed", flush=True)
            results[model] = {name: median(r) for name, r in runs.items()}
        swaps = promotions_under_load(made["reference"]["store"], bodies(made["reference"]["table"])[0])
        print(f"20 promotions under load: {swaps['requests']} requests, {swaps['failed']} failed, {swaps['wrong']} "
              "answered by a version not current during the request", flush=True)  # fmt: skip
        fuzzed = fuzz(made["keras-way"]["store"], made["keras-way"]["table"])
        print(f"fuzz: {fuzzed['answered']} rows answered 200, {fuzzed['logged']} rows in the log; statuses "
              f"{fuzzed['statuses']}; commands reading the log: {fuzzed['commands']}", flush=True)  # fmt: skip

    def best_peer(model: str, key: str, lower: bool = False) -> float:
        values = [results[model][n][key] for n in results[model] if n.startswith("peer,")]
        return min(values) if lower else max(values)

    ref = results["reference"]
    ours = ref["ctrain serve"]
    ceiling = ref["ceiling: parse the JSON, answer a constant"]
    print("\nmedians of the rounds; the better peer counts:")
    figures = {
        "single": ours["rps"] / best_peer("reference", "rps"),
        "ceiling": ours["rps"] / ceiling["rps"],
        "p99": ours["p99"] / best_peer("reference", "p99", lower=True),
        "rows": ours["rows"] / best_peer("reference", "rows"),
        "predict": ours["rps"] / ref["footnote: model.predict per request"]["rps"],
    }
    for model in ("keras-way", "cnn"):
        figures[f"{model} single"] = results[model]["ctrain serve"]["rps"] / best_peer(model, "rps")
        figures[f"{model} rows"] = results[model]["ctrain serve"]["rows"] / best_peer(model, "rows")
    for model in results:
        off = results[model]["ctrain serve, batching off (--batch-rows 1)"]["rps"]
        figures[f"{model} batching on / off"] = results[model]["ctrain serve"]["rps"] / off
    for name, value in figures.items():
        print(f"  {name}: {value:.2f}x")
    failed = sum(r[n]["failed"] for r in results.values() for n in r if n == "ctrain serve")
    emit(
        [
            check(
                "serve: single-row req/s vs the competent peer (tf.function), 32 connections",
                figures["single"],
                2.0,
                readme="serve.single",
            ),
            check(
                "serve: single-row req/s / the HTTP stack's ceiling",
                figures["ceiling"],
                0.6,
                "",
                readme="serve.ceiling",
            ),
            check(
                "serve: p99 latency / the peer's (single rows)",
                figures["p99"],
                1.0,
                "",
                at_most=True,
                readme="serve.p99",
            ),
            check("serve: rows/s with 1,000-row requests vs the peer", figures["rows"], 1.5, readme="serve.rows"),
            check(
                "serve: Keras-way model, single-row req/s vs the peer",
                figures["keras-way single"],
                1.0,
                readme="serve.keras.single",
            ),
            check(
                "serve: Keras-way model, rows/s (1,000-row) vs the peer",
                figures["keras-way rows"],
                1.0,
                readme="serve.keras.rows",
            ),
            check("serve: CNN, single-row req/s vs the peer", figures["cnn single"], 1.0, readme="serve.cnn.single"),
            check("serve: CNN, rows/s (1,000-row) vs the peer", figures["cnn rows"], 1.0, readme="serve.cnn.rows"),
            check("serve: failed requests under wrk", float(failed), 0, "", at_most=True),
            check("serve: failed requests across 20 promotions", float(swaps["failed"]), 0, "", at_most=True),
            check("serve: answers by a version not current then", float(swaps["wrong"]), 0, "", at_most=True),
            check(
                "serve: fuzz, rows answered 200 minus rows logged",
                float(abs(fuzzed["answered"] - fuzzed["logged"])),
                0,
                "",
                at_most=True,
            ),
            check(
                "serve: fuzz, commands reading the log that failed",
                float(sum(c != 0 for c in fuzzed["commands"].values())),
                0,
                "",
                at_most=True,
            ),
        ]
    )


if __name__ == "__main__":
    main()
