"""8 sweep trials on 2 Ray workers against the same 8 trials in one process: one by one, and
with the local executor's default (a thread per core, trials side by side).

Every side is a whole fresh process timed from outside: each pays its interpreter start and
imports, and the Ray side also the start of its local cluster (printed apart as well). Against
one by one, the most two workers can give is 2x; against the local default on this one 2-core
machine the ceiling is 1x (both use both cores; Ray adds its start and a process per worker),
so that figure says what Ray costs where it cannot help. The task:
a drifting binary problem (old and new batches of 8,000 rows each, the new ones with
shifted features), fresh_all for 600 epochs and finetune_all for 1000, four seeds each. When
the benchmark was written a trial trained for about 15 s; since the loop got faster (and the
settings are sized to the rows) a trial trains for about 2 s, and what Ray adds per trial (about
1.7 s) is most of it: the figure now says what Ray costs for short trials on one machine (the
Speed page (docs/speed.md) gives it with that reading; its target is missed).

Run: .venv/bin/python scripts/bench_sweep.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

from bench_check import check, emit

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = """
strategies:
  - fresh_all: {epochs: 600}
  - finetune_all: {epochs: 1000}
seeds: [0, 1, 2, 3]
"""


def make_store(path: str) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import make_classification

    from continual_trainer.store_setup import ingest_files, init_store
    from continual_trainer.trainer.loop import LoopConfig

    x, y = make_classification(n_samples=16000, n_features=20, n_informative=12, random_state=3)
    x[8000:, :5] += 0.75  # drift in the new batch
    with tempfile.TemporaryDirectory() as tmp:
        for name, part in (("old", slice(0, 8000)), ("new", slice(8000, None))):
            cols = {f"x{i}": x[part, i] for i in range(20)}
            pq.write_table(pa.table({**cols, "y": y[part].astype(np.int64)}), os.path.join(tmp, f"{name}.parquet"))
        init_store(path, os.path.join(tmp, "old.parquet"), "y", loop=LoopConfig(epochs=20))
        ingest_files(path, [os.path.join(tmp, "new.parquet")])


SEQUENTIAL = textwrap.dedent("""
    import json, sys, time
    start = time.perf_counter()
    from continual_trainer.data.storage import Store
    from continual_trainer.executor import LocalExecutor
    from continual_trainer.sweep import SweepSpec, run_sweep
    run_sweep(Store.open({store!r}), LocalExecutor(workers={workers}), SweepSpec.parse({spec!r}))
    print(json.dumps({{"seconds": time.perf_counter() - start}}))
""")

RAY = textwrap.dedent("""
    import json, sys, time
    from continual_trainer.cluster.executor import RayExecutor
    from continual_trainer.cluster.runtime import connect
    from continual_trainer.data.storage import Store
    from continual_trainer.sweep import SweepSpec, run_sweep
    t0 = time.perf_counter()
    connect(num_cpus=2)
    t1 = time.perf_counter()
    result = run_sweep(Store.open({store!r}), RayExecutor(), SweepSpec.parse({spec!r}))
    t2 = time.perf_counter()
    rows = result.table.to_pylist()
    print(json.dumps({{"start": t1 - t0, "seconds": t2 - t1, "trials": result.finished,
                       "train": sum(r["train_seconds"] for r in rows),
                       "peak_mb": max(r["worker_peak_rss_mb"] for r in rows)}}))
""")


def run(code: str) -> dict:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=HERE,  # not the checkout's root, whose continual_trainer/ would hide the installed package
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout
    return {**json.loads(out.strip().splitlines()[-1]), "process": time.perf_counter() - start}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        make_store(store)
        seq = run(SEQUENTIAL.format(store=store, spec=SPEC, workers=1))
        local = run(SEQUENTIAL.format(store=store, spec=SPEC, workers=None))
        ray = run(RAY.format(store=store, spec=SPEC))
    n = ray["trials"]
    ratio = seq["process"] / ray["process"]
    print(f"{n} trials, one process, whole process:                 {seq['process']:6.1f} s")
    print(f"{n} trials on Ray, 2 workers, whole process (Ray start included): {ray['process']:6.1f} s -> {ratio:.2f}x")
    print(f"  of which the local Ray's start: {ray['start']:.1f} s; the sweep itself {ray['seconds']:.1f} s")
    versus_local = local["process"] / ray["process"]
    print(f"{n} trials, one process, a thread per core (the default): {local['process']:6.1f} s")
    print(f"  -> Ray is {versus_local:.2f}x the local default (the ceiling on one 2-core machine is 1x)")
    overhead = (2 * ray["seconds"] - seq["seconds"]) / n
    print(
        f"Ray overhead per trial beyond perfect 2-way parallelism: {overhead:.2f} s "
        f"(training itself: {ray['train'] / n:.2f} s per trial)"
    )
    print(f"peak memory of one trainer worker: {ray['peak_mb']:.0f} MiB (limit 1536 MiB)")
    emit(
        [
            check(f"{n} sweep trials on 2 Ray workers vs one by one, whole processes", ratio, 1.6, readme="sweep.ray"),
            check(f"{n} sweep trials on 2 Ray workers vs the local default", versus_local, 0.8, readme="sweep.local"),
            check("peak memory of one trainer worker", ray["peak_mb"], 1536, " MiB", at_most=True, readme="sweep.mem"),
        ]
    )


if __name__ == "__main__":
    main()
