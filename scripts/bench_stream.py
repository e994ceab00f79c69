"""`ctrain stream --policy best` on batches of 69,000 rows: the reference settings against sized ones.

A synthetic stream as large as a real yearly batch (69,000 rows x 16 numeric features, two
classes, `make_classification` with 10 informative features, 3 clusters per class, 2%
label noise): a first batch to create the store, then two files in the inbox, and a
separate 20,000-row test split. The same store (copied) is streamed twice with the default
candidates (`finetune_new,finetune_all,fresh_all,ensemble_all`) in this process (`--local`):
- `--fixed-settings`: every candidate with the tutorial's settings (150 or 100 epochs at batch
  32), as the stream did before;
- default: settings sized to the rows (batch about rows/100, learning rate scaled by the
  square root, early stopping with patience 5, 25 s of training per file in all).
Printed: each file's processing time (the stream's own per-file seconds) and the test accuracy
of the version current at the end.

Run: .venv/bin/python scripts/bench_stream.py [--rows 69000]
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

BIN = os.path.dirname(sys.executable)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=69_000)
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
        inbox = os.path.join(tmp, "inbox")
        os.makedirs(inbox)
        for i, part in enumerate(parts[1:]):
            part.to_parquet(os.path.join(inbox, f"file{i}.parquet"), index=False)
        store = os.path.join(tmp, "store")
        start = time.perf_counter()
        init = [ctrain, "init", "--store", store, "--data", os.path.join(tmp, "first.parquet"), "--label", "y"]
        subprocess.run([*init, "--epochs", "20", "--batch-size", "256"], check=True, stdout=subprocess.DEVNULL)
        print(f"{n:,} rows per batch; init {time.perf_counter() - start:.0f} s (20 epochs at batch 256)", flush=True)
        for name, extra in (("reference settings (--fixed-settings)", ["--fixed-settings"]), ("sized settings", [])):
            copy = f"{store}-{len(extra)}"
            shutil.copytree(store, copy)
            start = time.perf_counter()
            out = subprocess.run(
                [ctrain, "stream", "--store", copy, "--inbox", inbox, "--once", "--local", "--json", *extra],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            total = time.perf_counter() - start
            events = json.loads(out.strip().splitlines()[-1])["events"]
            scored = os.path.join(tmp, "scored.parquet")
            subprocess.run(
                [ctrain, "predict", "--store", copy, "--data", os.path.join(tmp, "test.parquet"), "--out", scored],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            accuracy = float((pd.read_parquet(scored)["prediction"] == test["y"].to_numpy()).mean())
            per_file = ", ".join(f"{e['seconds']:.1f} s" for e in events)
            print(f"{name:<40} per file {per_file}; whole stream {total:.0f} s; test accuracy {accuracy:.4f}")
            for e in events:
                tried = ", ".join(
                    f"{c['strategy']} {c.get('holdout', {}).get('accuracy', float('nan')):.4f} "
                    f"({c.get('seconds', 0):.1f} s, batch {c.get('settings', {}).get('batch_size')})"
                    for c in e["candidates"]
                )
                print(f"    {e['file']}: {e['status']}; {tried}", flush=True)


if __name__ == "__main__":
    main()
