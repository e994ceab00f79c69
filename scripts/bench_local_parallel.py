"""Jobs side by side in one process: one thread, two threads, two processes, on the same jobs.

Why `executor.LocalExecutor` runs jobs on threads. One store (scikit-learn's digits, 900 rows
then 897 more), six strategies of 300 epochs each (finetune_new, finetune_all, fresh_all,
replay, der, ewc), run three ways in one run, after one warm-up job that traces the loop:
- one after another on this thread;
- on 2 threads of this process (as `LocalExecutor(workers=2)` runs them);
- on 2 spawned processes, each paying its imports and traces (what a process pool costs).
The accuracies must agree to the digit; the ratios are to the first way. The most two cores
can give is 2x.

Run: .venv/bin/python scripts/bench_local_parallel.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

NAMES = ("finetune_new", "finetune_all", "fresh_all", "replay", "der", "ewc")
EPOCHS = 300


def _accuracy(args: tuple[Any, Any, Any]) -> float:
    from continual_trainer.executor import run_job

    data, current, job = args
    return run_job(data, current, job).metrics["holdout_accuracy"]


def main() -> None:
    from sklearn.datasets import load_digits

    import continual_trainer as ct
    from continual_trainer import strategies
    from continual_trainer.data.storage import Store
    from continual_trainer.executor import Job
    from continual_trainer.updatedata import load_update_data
    from continual_trainer.versions import stored_candidate

    root = tempfile.mkdtemp()
    digits = load_digits(as_frame=True).frame
    digits.iloc[:900].to_parquet(os.path.join(root, "a.parquet"))
    digits.iloc[900:].to_parquet(os.path.join(root, "b.parquet"))
    store = ct.init_store(os.path.join(root, "s"), os.path.join(root, "a.parquet"), label="target", epochs=20)
    store.ingest(os.path.join(root, "b.parquet"))
    opened = Store.open(os.path.join(root, "s"))
    data = load_update_data(opened)
    current = stored_candidate(opened, data.parent).load()
    jobs = [Job(strategies.get(n), strategies.get(n).make_params({"epochs": EPOCHS}), 0) for n in NAMES]
    work = [(data, current, job) for job in jobs]
    _accuracy(work[0])  # traces the loop once, for the two in-process ways alike

    start = time.perf_counter()
    alone = [_accuracy(w) for w in work]
    one = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        threads = list(pool.map(_accuracy, work))
    two_threads = time.perf_counter() - start
    start = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as procs:
        processes = list(procs.map(_accuracy, work))
    two_processes = time.perf_counter() - start

    assert [round(a, 6) for a in threads] == [round(a, 6) for a in alone] == [round(a, 6) for a in processes]
    print(f"{len(jobs)} jobs of {EPOCHS} epochs: one thread {one:.1f} s")
    print(f"  2 threads   {two_threads:.1f} s  {one / two_threads:.2f}x")
    print(f"  2 processes {two_processes:.1f} s  {one / two_processes:.2f}x (each pays its imports and traces)")


if __name__ == "__main__":
    main()
