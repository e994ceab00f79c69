"""Model averaging on 2 actors against one process trained on all rows, same epochs.

The 200,000-row drift task: 100,000 old rows and 100,000 new rows whose first five
features are shifted; the current model is fit on the old rows, then `finetune_all`
runs for the same number of epochs (a) in one process on every training row and
(b) on 2 actors, each on half the rows, averaging weights every `--sync-steps` steps.
Both are scored on the store's holdout and on a separate 20,000-row test set drawn
from the new distribution.

Run: .venv/bin/python scripts/bench_averaging.py [--epochs 5] [--sync-steps 100]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_check import check, emit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--sync-steps", type=int, default=100)
    args = p.parse_args()

    from sklearn.datasets import make_classification

    from continual_trainer import strategies
    from continual_trainer.cluster.parallel import finetune_averaged
    from continual_trainer.cluster.runtime import connect
    from continual_trainer.data.rows import Rows
    from continual_trainer.data.storage import Store
    from continual_trainer.store_setup import ingest_files, init_store
    from continual_trainer.trainer.loop import LoopConfig
    from continual_trainer.trials import run_strategy, score_candidate
    from continual_trainer.updatedata import load_update_data
    from continual_trainer.versions import load_candidate

    x, y = make_classification(n_samples=220_000, n_features=20, n_informative=12, random_state=11)
    x[100_000:, :5] += 0.75
    test = Rows(x[200_000:].astype(np.float32), y[200_000:].astype(np.int32), np.zeros(20_000, np.int32))
    with tempfile.TemporaryDirectory() as tmp:
        for name, part in (("old", slice(0, 100_000)), ("new", slice(100_000, 200_000))):
            cols = {f"x{i}": x[part, i] for i in range(20)}
            pq.write_table(pa.table({**cols, "y": y[part].astype(np.int64)}), os.path.join(tmp, f"{name}.parquet"))
        uri = os.path.join(tmp, "store")
        init_store(uri, os.path.join(tmp, "old.parquet"), "y", loop=LoopConfig(epochs=args.epochs))
        ingest_files(uri, [os.path.join(tmp, "new.parquet")])
        store = Store.open(uri)
        data = load_update_data(store)
        current = load_candidate(store, data.parent)
        strategy = strategies.get("finetune_all")
        params = strategy.make_params({"epochs": str(args.epochs)})
        single = run_strategy(data, current, strategy, params, 0, {"test": test})
        connect(num_cpus=2)
        start = time.perf_counter()
        averaged, *_ = finetune_averaged(data, current, params, 0, actors=2, sync_steps=args.sync_steps)
        averaged = score_candidate(data, current, averaged, time.perf_counter() - start, {"test": test})
    rows = len(data.old) + len(data.new)
    print(f"finetune_all, {args.epochs} epochs, {rows:,} training rows; holdout {len(data.holdout):,} rows")
    for name, r in (
        ("one process, all rows", single),
        (f"2 actors, averaging every {args.sync_steps} steps", averaged),
    ):
        m = r.metrics
        print(
            f"{name:42} holdout acc {m['holdout_accuracy']:.4f}  test acc {m['test_accuracy']:.4f}  "
            f"{r.train_seconds:6.1f} s"
        )
    gap = 100 * (averaged.metrics["test_accuracy"] - single.metrics["test_accuracy"])
    print(f"test accuracy of the averaged model minus the single one: {gap:+.2f} points")
    emit([check("model averaging on 2 actors: accuracy points below one process", -gap, 1.0, " points", at_most=True)])


if __name__ == "__main__":
    main()
