"""`ctrain stream --once --policy best` on yearly files of 69,000 rows, one process per file.

A synthetic stream as large as a real yearly batch (69,000 rows x 16 numeric features, two
classes, `make_classification` with 10 informative features, 3 clusters per class, 2%
label noise): a first batch to create the store, then two files, and a separate 20,000-row
test split. Each file is dropped into the inbox and `ctrain stream --once` runs for it, a
whole process per file as a scheduler (cron, Airflow) drives it, with the default
candidates (`finetune_new,finetune_all,fresh_all,ensemble_all`) in this process (`--local`):
- default: settings sized to the rows (batch about rows/100, learning rate scaled by the
  square root, early stopping with patience 5, 25 s of training per file in all);
- with `--compare-fixed`, also `--fixed-settings`: every candidate with the tutorial's
  settings (150 or 100 epochs at batch 32), as the stream did before (minutes per file).
Printed: each file's whole-process seconds (what the scheduler waits), the stream's own
seconds for it, and the test accuracy of the version current at the end.

Run: .venv/bin/python scripts/bench_stream.py [--rows 69000] [--compare-fixed]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=69_000)
    p.add_argument("--compare-fixed", action="store_true", help="also stream with the tutorial's settings")
    args = p.parse_args()
    from sklearn.datasets import make_classification

    n = args.rows
    x, y = make_classification(
        3 * n + 20_000, 16, n_informative=10, n_redundant=3, n_clusters_per_class=3, flip_y=0.02, random_state=0
    )
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"f{i}" for i in range(16)])
    frame["y"] = y
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
        if args.compare_fixed:
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
                checks.append(check("slowest 69,000-row file through stream --once, whole process (s)", max(walls), 15,
                                    " s", at_most=True, readme="stream.file"))  # fmt: skip
            for e in events:
                tried = ", ".join(
                    f"{c['strategy']} {c.get('holdout', {}).get('accuracy', float('nan')):.4f} "
                    f"({c.get('seconds', 0):.1f} s, batch {c.get('settings', {}).get('batch_size')})"
                    for c in e["candidates"]
                )
                print(f"    {e['file']}: {e['status']}; {tried}", flush=True)

        emit(checks)


if __name__ == "__main__":
    main()
