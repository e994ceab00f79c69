"""The common path, side by side: `ctrain update` on the demo's data with two installs of ctrain.

Each install gets its own copy of one store (the reference experiment's first batch with the
default recipe, its second batch ingested); then, interleaved round by round, each runs
`ctrain update --strategy S --promote never` as a whole process (start-up, TensorFlow, reading,
training, scoring, saving: what a user waits for). Prints the median seconds of each and their
ratio. Used to check that a change does not slow the common path (e.g. an install of the commit
before it against the current one).

    python scripts/bench_update_path.py OLD/bin/ctrain NEW/bin/ctrain [--rounds 7] [--strategy finetune_all]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the baseline's ctrain executable")
    parser.add_argument("new", help="the candidate's ctrain executable")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--strategy", default="finetune_all")
    args = parser.parse_args()

    from continual_trainer.data.parquet import write_table
    from continual_trainer.demo import reference_data

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryDirectory() as tmp:
        data = reference_data()
        write_table(f"{tmp}/old.parquet", data.old)
        write_table(f"{tmp}/new.parquet", data.new)
        stores = {}
        for name, ctrain in (("old", args.old), ("new", args.new)):
            store = f"{tmp}/{name}-store"
            for argv in (
                ["init", "--store", store, "--data", f"{tmp}/old.parquet", "--label", "y", "--quiet"],
                ["ingest", "--store", store, f"{tmp}/new.parquet", "--quiet"],
            ):
                subprocess.run([ctrain, *argv], check=True, env=env, stdout=subprocess.DEVNULL)
            stores[name] = store
        seconds: dict[str, list[float]] = {"old": [], "new": []}
        for r in range(args.rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for name in order:
                ctrain = args.old if name == "old" else args.new
                copy = f"{tmp}/{name}-{r}"
                shutil.copytree(stores[name], copy)
                argv = ["update", "--store", copy, "--strategy", args.strategy, "--promote", "never", "--quiet"]
                start = time.perf_counter()
                subprocess.run([ctrain, *argv], check=True, env=env, stdout=subprocess.DEVNULL)
                seconds[name].append(time.perf_counter() - start)
                shutil.rmtree(copy)
        old, new = statistics.median(seconds["old"]), statistics.median(seconds["new"])
        print(f"update --strategy {args.strategy}, {args.rounds} interleaved rounds, whole processes")
        print(f"  baseline  median {old:.2f} s  ({', '.join(f'{s:.2f}' for s in seconds['old'])})")
        print(f"  candidate median {new:.2f} s  ({', '.join(f'{s:.2f}' for s in seconds['new'])})")
        print(f"  candidate / baseline: {new / old:.3f}")


if __name__ == "__main__":
    main()
