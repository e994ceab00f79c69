"""Each command's start as a user waits for it: whole processes, median of several runs.

A small store (the reference experiment's first batch, the default `mlp:20,10` recipe, its
second batch ingested) and a 100-row file to score are made once; then, round by round, each
command runs as a whole process: `ctrain --help`, `ctrain history`, `ctrain predict` of the
100 rows (a Dense model: scored in NumPy, without TensorFlow), `ctrain update --strategy
finetune_all --promote never` (TensorFlow's import and a small training) and `ctrain serve`
until its first answer to `GET /version` on 127.0.0.1. Printed: each command's median seconds
and its goal (issue "Everyday use, part three": `--help` under 0.3 s, `history` under 0.5 s,
`predict` under 1 s, `update` under 5 s), and `python -c pass` beside them (the interpreter's
own start).

Run: .venv/bin/python scripts/bench_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench_check import check, emit

BIN = os.path.dirname(sys.executable)
CTRAIN = os.path.join(BIN, "ctrain")
GOALS = {"--help": 0.3, "history": 0.5, "predict": 1.0, "update": 5.0, "serve": None}


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def serve_until_answered(store: str) -> float:
    """Seconds from starting `ctrain serve` to its first answer (bounded: 120 s)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [CTRAIN, "serve", "--store", store, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while time.perf_counter() - start < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("serve did not answer within 120 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    from continual_trainer.data.parquet import write_table
    from continual_trainer.demo import reference_data

    data = reference_data()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: os.path.join(tmp, f"{name}.parquet") for name in ("old", "new", "score")}
        write_table(paths["old"], data.old)
        write_table(paths["new"], data.new)
        write_table(paths["score"], data.test.slice(0, 100).drop_columns(["y"]))
        store = os.path.join(tmp, "store")
        subprocess.run([CTRAIN, "init", "--store", store, "--data", paths["old"], "--label", "y"], check=True,
                       capture_output=True)  # fmt: skip
        subprocess.run([CTRAIN, "ingest", "--store", store, paths["new"]], check=True, capture_output=True)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "--help": [CTRAIN, "--help"],
            "history": [CTRAIN, "history", "--store", store],
            "predict": [CTRAIN, "predict", "--store", store, "--data", paths["score"], "--out", f"{tmp}/out.parquet"],
            "update": [CTRAIN, "update", "--store", store, "--strategy", "finetune_all", "--promote", "never"],
        }
        times: dict[str, list[float]] = {name: [] for name in [*commands, "serve"]}
        for _ in range(args.rounds):
            for name, argv in commands.items():
                times[name].append(timed(argv))
            times["serve"].append(serve_until_answered(store))
    checks = []
    print(f"{'command':<16} {'median s':>9}  goal     (runs)")
    for name, runs in times.items():
        median = statistics.median(runs)
        goal = GOALS.get(name)
        print(f"{name:<16} {median:>9.2f}  {'< ' + str(goal) + ' s' if goal else '':<8} "
              f"({', '.join(f'{t:.2f}' for t in runs)})")  # fmt: skip
        if goal:
            checks.append(check(f"start of ctrain {name}, whole process (s)", median, goal, " s", at_most=True,
                                readme=f"start.{name.strip('-')}"))  # fmt: skip
    emit(checks)


if __name__ == "__main__":
    main()
