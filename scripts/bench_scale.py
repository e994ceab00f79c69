"""Out of core: peak memory and training speed of `ctrain update` on stores of millions of rows.

For each size (millions of rows × 20 float features, a linear concept with 5% label noise, in
files of 1 million rows with row groups of 131,072 rows): a store is made with `ctrain init`
on the first file and `ctrain ingest` of the rest, then `ctrain update --strategy finetune_all
--set epochs=1 --set batch_size=1024 --promote never` runs twice on copies of it:

- in memory (`--memory-budget 1TiB`): every training row read into the process, as before;
- in pieces (`--memory-budget 256MiB`): training rows read from the store a chunk at a time.

Printed per size and mode: the process's peak resident memory (its own, by `wait4`), the
training seconds from the version's manifest (in pieces they include reading the rows; in
memory the rows were read before), rows trained per second, holdout accuracy and the whole
command's seconds; then the in-pieces path's throughput as a share of the in-memory path's.

Run: .venv/bin/python scripts/bench_scale.py [--sizes 1,4] [--workdir DIR]
(`--sizes 1,4,16` for the issue's figures; 16 million rows need about 1.4 GB of disk per copy.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES, FILE_ROWS, ROW_GROUP = 20, 500_000, 131_072
CTRAIN = [sys.executable, "-m", "continual_trainer"]


def write_files(folder: str, millions: int) -> list[str]:
    rng = np.random.default_rng(0)
    w = rng.normal(size=FEATURES)
    paths = []
    for i in range(millions * 1_000_000 // FILE_ROWS):
        x = rng.normal(size=(FILE_ROWS, FEATURES)).astype(np.float32)
        y = ((x @ w) > 0).astype(np.int64)
        flip = rng.random(FILE_ROWS) < 0.05
        y[flip] = 1 - y[flip]
        table = pa.table({**{f"x{j}": x[:, j] for j in range(FEATURES)}, "label": y})
        path = os.path.join(folder, f"part{i:03d}.parquet")
        pq.write_table(table, path, row_group_size=ROW_GROUP)
        paths.append(path)
    return paths


def run(argv: list[str]) -> tuple[float, str]:
    """Run a command; its peak RSS in MiB (its own, not its children's) and its stdout."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.PIPE, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode() if proc.stderr else ""
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err[-2000:]}")
    return usage.ru_maxrss / 1024, text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1,4", help="millions of rows, comma-separated")
    p.add_argument("--workdir", help="where to write the stores (default a temporary folder)")
    args = p.parse_args()
    base = args.workdir or tempfile.mkdtemp(prefix="bench-scale-")
    rows = []
    start = time.perf_counter()
    try:
        for millions in [int(s) for s in args.sizes.split(",")]:
            folder = os.path.join(base, f"{millions}m")
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
            files = write_files(folder, millions)
            store = os.path.join(folder, "store")
            run([*CTRAIN, "init", "--store", store, "--data", files[0], "--label", "label", "--epochs", "1"])
            if files[1:]:
                run([*CTRAIN, "ingest", "--store", store, *files[1:]])
            for f in files:
                os.remove(f)
            for mode, budget in (("in memory", "1TiB"), ("in pieces", "256MiB")):
                copy = f"{store}-{mode.replace(' ', '-')}"
                shutil.copytree(store, copy)
                argv = [*CTRAIN, "update", "--store", copy, "--strategy", "finetune_all", "--promote", "never"]
                argv += ["--set", "epochs=1", "--set", "batch_size=1024", "--memory-budget", budget, "--json"]
                began = time.perf_counter()
                peak, out = run(argv)
                wall = time.perf_counter() - began
                outcome = json.loads(out)
                history = json.loads(run([*CTRAIN, "history", "--store", copy, "--json"])[1])["versions"]
                seconds = next(v["train_seconds"] for v in history if v["version"] == outcome["version"])
                trained = millions * 1_000_000 * 0.8
                accuracy = outcome["metrics"]["holdout_accuracy"]
                rows.append((millions, mode, peak, seconds, trained / seconds, accuracy, wall))
                print(f"  {millions}M {mode}: {peak:.0f} MiB, {seconds:.1f} s ({time.perf_counter() - start:.0f} s)")
                shutil.rmtree(copy)
            shutil.rmtree(folder)
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    print(
        f"\n{'rows':>6} {'mode':<10} {'peak RSS MiB':>12} {'train s':>8} {'rows/s':>10} {'accuracy':>9} {'update s':>9}"
    )
    for millions, mode, peak, seconds, speed, accuracy, wall in rows:
        print(f"{millions:>5}M {mode:<10} {peak:12.0f} {seconds:8.1f} {speed:10.0f} {accuracy:9.4f} {wall:9.1f}")
    for millions in sorted({r[0] for r in rows}):
        memory, pieces = (next(r for r in rows if r[0] == millions and r[1] == m) for m in ("in memory", "in pieces"))
        print(
            f"{millions}M rows: in pieces at {pieces[4] / memory[4]:.0%} of the in-memory rows/s, "
            f"peak {pieces[2]:.0f} vs {memory[2]:.0f} MiB"
        )
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
