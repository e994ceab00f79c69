"""Sharded evaluation: 2,000,000 rows scored on 2 actors against 1 actor, side by side.

Actors are started and warm (model loaded, TensorFlow imported) before timing, as in
a long-lived pool; each reads its own row groups of the same Parquet file.

Run: .venv/bin/python scripts/bench_sharded.py [--rows 2000000]
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
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from continual_trainer.cluster.runtime import connect
    from continual_trainer.cluster.sharded import ScorerPool
    from continual_trainer.data.storage import Store
    from continual_trainer.store_setup import init_store
    from continual_trainer.trainer.loop import LoopConfig

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, 20)).astype(np.float32)
    y = (x[:, :5].sum(axis=1) > 0).astype(np.int64)
    table = pa.table({**{f"x{i}": x[:, i] for i in range(20)}, "y": y})
    with tempfile.TemporaryDirectory() as tmp:
        first = os.path.join(tmp, "first.parquet")
        pq.write_table(table.slice(0, 5000), first)
        init_store(os.path.join(tmp, "store"), first, "y", loop=LoopConfig(epochs=5))
        store = Store.open(os.path.join(tmp, "store"))
        big = os.path.join(tmp, "big.parquet")
        pq.write_table(table, big, row_group_size=100_000)
        connect(num_cpus=2)
        timings = {}
        for n in (1, 2):
            pool = ScorerPool.start(store, store.current(), n)
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                metrics = pool.evaluate(big)
                best = min(best, time.perf_counter() - start)
            pool.stop()
            timings[n] = best
            print(
                f"{n} actor(s): {best:.2f} s for {args.rows:,} rows (best of {args.repeats}), "
                f"accuracy {metrics['accuracy']:.4f}"
            )
    print(f"speedup of 2 actors over 1: {timings[1] / timings[2]:.2f}x")
    emit([check("sharded evaluation, 2 warm actors vs 1", timings[1] / timings[2], 1.6, readme="sharded")])


if __name__ == "__main__":
    main()
