"""The reference experiment end to end: the tutorial's data, model and strategies."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from continual_trainer.data.parquet import table_to_bytes, write_table
from continual_trainer.data.rows import NUMERIC, Rows
from continual_trainer.data.storage import Store, utc_stamp

if TYPE_CHECKING:
    from continual_trainer.executor import Executor

N_FEATURES = 20


@dataclass(frozen=True)
class ReferenceData:
    old: pa.Table
    new: pa.Table
    test: pa.Table


def _table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    cols = {f"x{i}": pa.array(x[:, i]) for i in range(x.shape[1])}
    return pa.table({**cols, "y": pa.array(y.astype(np.int64))})


def reference_data(n_samples: int = 1000) -> ReferenceData:
    """The tutorial's problem, plus a test split of the same distribution.

    `make_classification(n_features=20, n_informative=15, n_redundant=5,
    random_state=1)` with twice the tutorial's samples, so the test rows come from
    the same clusters: half is the test split, the other half is split 50/50 into
    old and new (`train_test_split(..., test_size=0.5, random_state=1)`), 500 rows
    each as in the tutorial.
    """
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    x, y = make_classification(
        n_samples=2 * n_samples, n_features=N_FEATURES, n_informative=15, n_redundant=5, random_state=1
    )
    x_ref, x_test, y_ref, y_test = train_test_split(x, y, test_size=0.5, random_state=1)
    x_old, x_new, y_old, y_new = train_test_split(x_ref, y_ref, test_size=0.5, random_state=1)
    return ReferenceData(_table(x_old, y_old), _table(x_new, y_new), _table(x_test, y_test))


def run_demo(
    executor: Executor,
    store_uri: str | None = None,
    *,
    seed: int = 0,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[str, list[dict[str, Any]], str]:
    """Fit the old model, run every strategy against the new batch, score on the test split.

    The store keeps the default holdout (a fifth of each batch), so it is a store every
    command works on afterwards (`ctrain sweep`, `update`, `stream`); the table scores
    every strategy on the separate test split as well.

    Args:
        executor: where the strategies run (this process, or Ray actors).
        store_uri: where to create the store (default: a new temporary folder).
        seed: fixes every model's initialisation and shuffling.
        on_result: called with each result row as it arrives.

    Returns:
        The store URI, one result row per strategy, and the folder of the saved report.
    """
    from continual_trainer import strategies
    from continual_trainer.data.batches import ingest
    from continual_trainer.executor import Job, result_or_raise
    from continual_trainer.promotion import Promotion, commit
    from continual_trainer.store_setup import init_store
    from continual_trainer.updatedata import load_update_data
    from continual_trainer.versions import stored_candidate

    store_uri = store_uri or tempfile.mkdtemp(prefix="ctrain-demo-")
    data = reference_data()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name in ("old", "new"):
            paths[name] = os.path.join(tmp, f"{name}.parquet")
            write_table(paths[name], getattr(data, name))
        first = init_store(store_uri, paths["old"], "y", seed=seed)
        store = Store.open(store_uri)
        ingest(store, paths["new"])
    features = np.stack([data.test.column(f"x{i}").to_numpy() for i in range(N_FEATURES)], axis=1)
    test = {
        "test": Rows(
            {NUMERIC: features.astype(np.float32)},
            data.test.column("y").to_numpy().astype(np.int32),
            np.zeros(data.test.num_rows, np.int32),
        )
    }
    jobs = [Job(s, s.make_params(), seed) for s in map(strategies.get, strategies.names())]
    update_data = load_update_data(store, params=[job.params for job in jobs])
    rows: dict[int, dict[str, Any]] = {}

    def record(i: int, outcome: Any) -> None:
        job = jobs[i]
        result = result_or_raise(outcome)
        committed = commit(store, update_data, job.strategy.name, job.params, seed, result, Promotion("never"))
        rows[i] = {
            "strategy": job.strategy.name,
            "test_accuracy": committed.metrics["test_accuracy"],
            "test_log_loss": committed.metrics["test_log_loss"],
            "train_seconds": committed.train_seconds,
            "members": committed.members,
            "version": committed.version,
            "holdout_accuracy": committed.metrics.get("holdout_accuracy"),
            "test_rows": data.test.num_rows,
            "holdout_rows": committed.metrics.get("holdout_rows"),
        }
        if on_result:
            on_result(rows[i])

    executor.run(update_data, stored_candidate(store, update_data.parent), jobs, extra_eval=test, on_done=record)
    results = [rows[i] for i in range(len(jobs))]
    report = store.write_report(
        f"demo-{utc_stamp()}",
        {
            "results.parquet": table_to_bytes(pa.Table.from_pylist(results)),
            "report.md": render_table(
                results, f"old model: {first.version}, trained in {first.train_seconds:.2f} s"
            ).encode(),
        },
    )
    return store.uri, results, report


def render_table(results: list[dict[str, Any]], note: str = "") -> str:
    """A Markdown table of demo results."""
    lines = [
        "| strategy | test accuracy | log loss | train seconds | members |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['strategy']} | {r['test_accuracy']:.3f} | {r['test_log_loss']:.3f} | "
            f"{r['train_seconds']:.2f} | {r['members']} |"
        )
    return "\n".join(lines) + (f"\n\n{note}\n" if note else "\n")
