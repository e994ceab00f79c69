"""`ctrain stream --once --policy best` on yearly files of 69,000 rows, one process per file.

A synthetic stream as large as a real yearly batch (69,000 rows x 16 numeric features, two
classes, `make_classification` with 10 informative features, 3 clusters per class, 2%
label noise): a first batch to create the store, then two files, and a separate 20,000-row
test split; and (`--data mixed`, also run by default) a census-like table unlike it: 69,000
rows of 4 integer columns (age, hours, ...), 2 float columns and 8 string categories of 2 to
40 values each, the label a noisy rule over both kinds (about the shape of a yearly
American Community Survey extract). Each file is dropped into the inbox and `ctrain stream --once` runs for it, a
whole process per file as a scheduler (cron, Airflow) drives it, with the default
candidates (`finetune_new,finetune_all,fresh_all,ensemble_all`) in this process (`--local`):
- default: settings sized to the rows (a batch giving about 400 steps per epoch, learning rate
  scaled by the square root, early stopping with patience 15) and the file's budget (15 s from
  its pick-up; the candidates train, two at a time, for 45 % of what is left once it is read
  and scored);
- with `--compare-fixed`, also `--fixed-settings`: every candidate with the tutorial's
  settings (150 or 100 epochs at batch 32), as the stream did before (minutes per file).
Printed: each file's whole-process seconds (what the scheduler waits), the stream's own
seconds for it, and the test accuracy of the version current at the end.

Run: .venv/bin/python scripts/bench_stream.py [--rows 69000] [--data numeric|mixed|both] [--compare-fixed]
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
import pandas as pd
from bench_check import check, emit

BIN = os.path.dirname(sys.executable)


CATEGORIES = {"work": 9, "education": 16, "marital": 7, "occupation": 15, "relation": 6, "race": 5, "sex": 2,
              "country": 40}  # fmt: skip


def numeric(rows: int) -> pd.DataFrame:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        rows, 16, n_informative=10, n_redundant=3, n_clusters_per_class=3, flip_y=0.02, random_state=0
    )
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"f{i}" for i in range(16)])
    frame["y"] = y
    return frame


def mixed(rows: int) -> pd.DataFrame:
    """Census-like: integer and float columns, string categories, a noisy rule over both."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "age": rng.integers(17, 90, rows),
            "hours": np.clip(rng.normal(40, 12, rows), 1, 99).astype(np.int64),
            "children": rng.poisson(1.0, rows),
            "years_in_job": rng.integers(0, 40, rows),
            "income": rng.lognormal(10, 1, rows).astype(np.float32),
            "commute_km": rng.gamma(2, 8, rows).astype(np.float32),
        }
    )
    score = 0.04 * (frame["age"] - 45) - 0.002 * (frame["age"] - 45) ** 2 + 0.05 * (frame["hours"] - 40)
    score += 0.5 * (np.log(frame["income"]) - 10)
    for name, k in CATEGORIES.items():
        codes = rng.zipf(1.6, rows) % k  # a few common values and a long tail, as real categories
        effect = rng.normal(0, 0.8, k)
        score += effect[codes]
        frame[name] = pd.Series([f"{name}-{c}" for c in range(k)]).to_numpy()[codes]
    frame["y"] = (score + rng.logistic(0, 0.6, rows) > np.median(score)).astype(np.int64)
    return frame


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=69_000)
    p.add_argument("--data", choices=["numeric", "mixed", "both"], default="both")
    p.add_argument("--compare-fixed", action="store_true", help="also stream with the tutorial's settings")
    args = p.parse_args()
    checks: list[dict] = []
    for name in ("numeric", "mixed") if args.data == "both" else (args.data,):
        checks += stream(name, args.rows, args.compare_fixed)
    emit(checks)


def stream(data: str, n: int, compare_fixed: bool) -> list[dict]:
    """Stream two files of `n` rows of data set `data`: its checks."""
    frame = (mixed if data == "mixed" else numeric)(3 * n + 20_000)
    print(f"== {data}: {len(frame.columns) - 1} columns ({', '.join(sorted({str(t) for t in frame.dtypes}))})")
    ctrain = os.path.join(BIN, "ctrain")
    with tempfile.TemporaryDirectory() as tmp:
        parts = [frame.iloc[i * n : (i + 1) * n] for i in range(3)]
        test = frame.iloc[3 * n :]
        parts[0].to_parquet(os.path.join(tmp, "first.parquet"), index=False)
        test.to_parquet(os.path.join(tmp, "test.parquet"), index=False)
        files = []
        for i, part in enumerate(parts[1:]):
            files.append(os.path.join(tmp, f"file{i}.parquet"))
            part.to_parquet(files[-1], index=False)
        store = os.path.join(tmp, "store")
        start = time.perf_counter()
        init = [ctrain, "init", "--store", store, "--data", os.path.join(tmp, "first.parquet"), "--label", "y"]
        subprocess.run([*init, "--epochs", "20", "--batch-size", "256"], check=True, stdout=subprocess.DEVNULL)
        print(f"{n:,} rows per batch; init {time.perf_counter() - start:.0f} s (20 epochs at batch 256)", flush=True)
        runs = [("sized settings (the default)", [])]
        if compare_fixed:
            runs.append(("reference settings (--fixed-settings)", ["--fixed-settings"]))
        checks: list[dict] = []
        for name, extra in runs:
            copy, inbox = f"{store}-{len(extra)}", os.path.join(tmp, f"inbox-{len(extra)}")
            shutil.copytree(store, copy)
            os.makedirs(inbox)
            events, walls = [], []
            for path in files:  # one file arrives, one process handles it
                shutil.copy(path, inbox)
                start = time.perf_counter()
                out = subprocess.run(
                    [ctrain, "stream", "--store", copy, "--inbox", inbox, "--once", "--local", "--json", *extra],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                walls.append(time.perf_counter() - start)
                events += json.loads(out.strip().splitlines()[-1])["events"]
            scored = os.path.join(tmp, "scored.parquet")
            subprocess.run(
                [ctrain, "predict", "--store", copy, "--data", os.path.join(tmp, "test.parquet"), "--out", scored],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            accuracy = float((pd.read_parquet(scored)["prediction"] == test["y"].to_numpy()).mean())
            pairs = zip(walls, events, strict=True)
            per_file = ", ".join(f"{w:.1f} s ({e['seconds']:.1f} s in the stream)" for w, e in pairs)
            print(f"{name:<40} per file, whole process: {per_file}; test accuracy {accuracy:.4f}")
            if not extra:
                key = "stream.file" if data == "numeric" else f"stream.file.{data}"
                checks.append(check(f"slowest {n:,}-row {data} file through stream --once, whole process (s)",
                                    max(walls), 15, " s", at_most=True, readme=key))  # fmt: skip
            for e in events:
                tried = ", ".join(
                    f"{c['strategy']} {c.get('holdout', {}).get('accuracy', float('nan')):.4f} "
                    f"({c.get('seconds', 0):.1f} s, batch {c.get('settings', {}).get('batch_size')})"
                    for c in e["candidates"]
                )
                print(f"    {e['file']}: {e['status']}; {tried}", flush=True)
    return checks


if __name__ == "__main__":
    main()
