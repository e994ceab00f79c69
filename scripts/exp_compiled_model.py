"""A model compiled with Adam, imported, updated by every strategy at the sized defaults.

examples/census.py builds the network Keras's structured-data guide builds (one input per
column, adapted `Normalization`, `StringLookup`, `IntegerLookup`) and compiles it with
`"adam"`; it is fitted on a first batch and imported with `ctrain init --model`. A second,
drifted batch (older people, a new city) is ingested, and every strategy updates the model in
one `ctrain update --strategy <all> --promote never --json` run: with the model's own
`compile()` (the default), and with `--set optimizer=sgd` (the tutorial's SGD recipe every
imported model trained with before). Printed: each strategy's holdout accuracy beside keep's.

Run: .venv/bin/python scripts/exp_compiled_model.py [--rows 8000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))
CTRAIN = os.path.join(os.path.dirname(sys.executable), "ctrain")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=8000)
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import pyarrow.parquet as pq
    from census import census, keras_way_model

    from continual_trainer import strategies

    names = strategies.names()
    with tempfile.TemporaryDirectory() as tmp:
        first = census(args.rows, seed=0)
        pq.write_table(first, f"{tmp}/first.parquet")
        pq.write_table(census(args.rows, seed=1, cities=("paris", "lyon", "nice", "lille"), shift=1.0),
                       f"{tmp}/second.parquet")  # fmt: skip
        keras_way_model(first).save(f"{tmp}/model.keras")
        results = {}
        for how, extra in (("the model's compile() (Adam)", []), ("--set optimizer=sgd", ["--set", "optimizer=sgd"])):
            store = f"{tmp}/store-{len(extra)}"
            subprocess.run([CTRAIN, "init", "--store", store, "--data", f"{tmp}/first.parquet", "--label", "y",
                            "--model", f"{tmp}/model.keras"], check=True, capture_output=True)  # fmt: skip
            ingest = [CTRAIN, "ingest", "--store", store, f"{tmp}/second.parquet"]
            subprocess.run(ingest, check=True, capture_output=True)
            run = subprocess.run(
                [CTRAIN, "update", "--store", store, "--strategy", ",".join(names), "--promote", "never", "--json",
                 *extra], capture_output=True, text=True,
            )  # fmt: skip
            print(f"== {how}: {run.stderr.strip().splitlines()[0] if run.stderr.strip() else ''}")
            out = json.loads(run.stdout.strip().splitlines()[-1])
            results[how] = {v["strategy"]: v["metrics"]["holdout_accuracy"] for v in out["versions"]}
            results[how]["keep"] = out["versions"][0]["current_metrics"]["holdout_accuracy"]
    heads = list(results)
    print(f"{'strategy':<14}" + "".join(f"{h:>32}" for h in heads))
    keep = {h: results[h].get("keep") for h in heads}
    for name in names:
        cells = []
        for h in heads:
            acc = results[h].get(name)
            cells.append(f"{'failed':>32}" if acc is None else f"{acc:>22.4f} ({acc - keep[h]:+.4f})")
        print(f"{name:<14}" + "".join(f"{c:>32}" for c in cells))
    below = [n for n in names if results[heads[0]].get(n, 0) < keep[heads[0]]]
    print(f"below keep with the model's compile(): {', '.join(below) or 'none'}")


if __name__ == "__main__":
    main()
