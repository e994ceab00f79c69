"""A model compiled with Adam, imported, updated by every strategy at the sized defaults.

examples/census.py builds the network Keras's structured-data guide builds (one input per
column, adapted `Normalization`, `StringLookup`, `IntegerLookup`) and compiles it with
`"adam"`; it is fitted on a first batch and imported with `ctrain init --model`. A second,
drifted batch (older people, a new city) is ingested, and every strategy updates the model in
one `ctrain update --strategy <all> --promote never --json` run: with the model's own
`compile()` (the default), and with `--set optimizer=sgd` (the tutorial's SGD recipe every
imported model trained with before). Printed: each strategy's holdout accuracy beside keep's.

With `--seeds N` (and `--compile-only`, to skip the SGD run), N data sets (first batch seed
2k, second 2k+1) and each strategy's difference from keep seed by seed: its mean and standard
error, in points.

Run: .venv/bin/python scripts/exp_compiled_model.py [--rows 8000] [--seeds 1] [--compile-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
CTRAIN = os.path.join(os.path.dirname(sys.executable), "ctrain")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=8000)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--compile-only", action="store_true", help="skip the --set optimizer=sgd run")
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from continual_trainer import strategies

    names = strategies.names()
    hows = {"the model's compile() (Adam)": []}
    if not args.compile_only:
        hows["--set optimizer=sgd"] = ["--set", "optimizer=sgd"]
    runs = [one_data_set(args.rows, seed, hows, names) for seed in range(args.seeds)]
    heads = list(hows)
    print(f"{'strategy':<14}" + "".join(f"{h:>32}" for h in heads))
    for name in dict.fromkeys(["keep", *names]):
        cells = []
        for h in heads:
            acc = np.array([r[h].get(name, np.nan) for r in runs])
            diff = 100 * (acc - np.array([r[h]["keep"] for r in runs]))
            if np.isnan(acc).any():
                cells.append(f"{'failed':>32}")
            elif len(runs) == 1 or name == "keep":
                cells.append(f"{acc.mean():>22.4f} ({diff.mean():+.2f})")
            else:
                se = diff.std(ddof=1) / np.sqrt(len(diff))
                cells.append(f"{acc.mean():>16.4f} ({diff.mean():+.2f} ± {se:.2f})")
        print(f"{name:<14}" + "".join(f"{c:>32}" for c in cells))
    first = heads[0]
    diffs = {n: np.array([r[first].get(n, np.nan) - r[first]["keep"] for r in runs]) for n in names if n != "keep"}
    below = [n for n, d in diffs.items() if not d.mean() >= 0]
    print(f"below keep on average with the model's compile(), {len(runs)} data set(s): {', '.join(below) or 'none'}")
    if len(runs) > 1:
        counts = ", ".join(f"{n} {int((d < 0).sum())}" for n, d in diffs.items())
        print(f"data sets on which each is below keep: {counts}")


def one_data_set(rows: int, seed: int, hows: dict[str, list[str]], names: list[str]) -> dict[str, dict[str, float]]:
    """Holdout accuracy of keep and of strategies `names`, per way of training, on data set `seed`."""
    import keras
    import pyarrow.parquet as pq
    from census import census, keras_way_model

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        first = census(rows, seed=2 * seed)
        pq.write_table(first, f"{tmp}/first.parquet")
        pq.write_table(census(rows, seed=2 * seed + 1, cities=("paris", "lyon", "nice", "lille"), shift=1.0),
                       f"{tmp}/second.parquet")  # fmt: skip
        keras.utils.set_random_seed(seed)  # the same imported model on every run of this data set
        keras_way_model(first).save(f"{tmp}/model.keras")
        for how, extra in hows.items():
            store = f"{tmp}/store-{len(extra)}"
            subprocess.run([CTRAIN, "init", "--store", store, "--data", f"{tmp}/first.parquet", "--label", "y",
                            "--model", f"{tmp}/model.keras"], check=True, capture_output=True)  # fmt: skip
            ingest = [CTRAIN, "ingest", "--store", store, f"{tmp}/second.parquet"]
            subprocess.run(ingest, check=True, capture_output=True)
            run = subprocess.run(
                [CTRAIN, "update", "--store", store, "--strategy", ",".join(names), "--promote", "never",
                 "--json", *extra], capture_output=True, text=True,
            )  # fmt: skip
            print(f"== data set {seed}, {how}: {run.stderr.strip().splitlines()[0] if run.stderr.strip() else ''}")
            out = json.loads(run.stdout.strip().splitlines()[-1])
            results[how] = {v["strategy"]: v["metrics"]["holdout_accuracy"] for v in out["versions"]}
            results[how]["keep"] = out["versions"][0]["current_metrics"]["holdout_accuracy"]
    return results


if __name__ == "__main__":
    main()
