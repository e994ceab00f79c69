"""`ctrain update --strategy a,b,c` against three `ctrain update --strategy X` runs.

The digits (scikit-learn's copy): a store initialised on the first half, the second half
ingested; two copies of it. On one, a single process trains finetune_all, ewc and fresh_all
side by side on one read of the data; on the other, three processes train one each, one after
the other, as a user comparing strategies without YAML did before. Both `--promote never`,
whole processes (TensorFlow's import and the store's reads charged to each), the same sized
settings. Printed: the wall times and their ratio, and each side's holdout accuracies (the
same strategies on the same rows: they should agree).

Run: .venv/bin/python scripts/bench_update_several.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench_check import check, emit

CTRAIN = os.path.join(os.path.dirname(sys.executable), "ctrain")
STRATEGIES = ("finetune_all", "ewc", "fresh_all")


def ctrain(*argv: str) -> dict:
    out = subprocess.run([CTRAIN, *argv, "--json", "--quiet"], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits(as_frame=True).frame.sample(frac=1, random_state=0).reset_index(drop=True)
    half = len(digits) // 2
    with tempfile.TemporaryDirectory() as tmp:
        old, new = os.path.join(tmp, "old.parquet"), os.path.join(tmp, "new.parquet")
        pd.DataFrame(digits.iloc[:half]).to_parquet(old)
        pd.DataFrame(digits.iloc[half:]).to_parquet(new)
        one, three = os.path.join(tmp, "one"), os.path.join(tmp, "three")
        ctrain("init", "--store", one, "--data", old, "--label", "target", "--epochs", "30")
        ctrain("ingest", "--store", one, new)
        shutil.copytree(one, three)

        start = time.perf_counter()
        together = ctrain("update", "--store", one, "--strategy", ",".join(STRATEGIES), "--promote", "never")
        one_process = time.perf_counter() - start
        start = time.perf_counter()
        apart = [ctrain("update", "--store", three, "--strategy", s, "--promote", "never") for s in STRATEGIES]
        three_processes = time.perf_counter() - start

    accuracy = {v["strategy"]: v["metrics"]["holdout_accuracy"] for v in together["versions"]}
    alone = {a["strategy"]: a["metrics"]["holdout_accuracy"] for a in apart}
    ratio = three_processes / one_process
    print(f"update --strategy {','.join(STRATEGIES)}: {one_process:.1f} s in one process", flush=True)
    print(f"three updates, one strategy each:      {three_processes:.1f} s in three processes", flush=True)
    print(f"ratio: {ratio:.2f}x; holdout accuracy together {accuracy} vs apart {alone}", flush=True)
    gap = max(abs(accuracy[s] - alone[s]) for s in STRATEGIES) * 100
    emit(
        [
            check("update a,b,c vs three updates, whole processes", ratio, 1.5, readme="update.several"),
            check("update a,b,c: accuracy points from the separate runs", gap, 1.0, " points", at_most=True),
        ]
    )


if __name__ == "__main__":
    main()
