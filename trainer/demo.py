"""The reference experiment end to end: the tutorial's data, model and strategies."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from data.parquet import table_to_bytes, write_table
from data.rows import Rows
from data.storage import Store, utc_stamp

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
    store_uri: str | None = None,
    *,
    seed: int = 0,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    runner: Callable[..., list[Any]] | None = None,
) -> tuple[str, list[dict[str, Any]], str]:
    """Fit the old model, run every strategy against the new batch, score on the test split.

    Args:
        store_uri: where to create the store (default: a new temporary folder).
        seed: fixes every model's initialisation and shuffling.
        on_result: called with each result row as it arrives.
        runner: runs the strategies, e.g. `cluster.pool.run_jobs` on Ray actors; by
            default they run one by one in this process.

    Returns:
        The store URI, one result row per strategy, and the folder of the saved report.
    """
    import strategies
    from data.batches import ingest
    from trainer.pipeline import (
        candidate_files,
        commit,
        init_store,
        load_candidate,
        load_update_data,
        run_strategy,
    )

    store_uri = store_uri or tempfile.mkdtemp(prefix="ctrain-demo-")
    data = reference_data()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name in ("old", "new"):
            paths[name] = os.path.join(tmp, f"{name}.parquet")
            write_table(paths[name], getattr(data, name))
        # The tutorial trains on every old and new row; the separate test split scores them.
        first = init_store(store_uri, paths["old"], "y", seed=seed, holdout_fraction=0.0)
        store = Store.open(store_uri)
        ingest(store, paths["new"])
    test = {
        "test": Rows(
            np.stack([data.test.column(f"x{i}").to_numpy() for i in range(N_FEATURES)], axis=1).astype(np.float32),
            data.test.column("y").to_numpy().astype(np.int32),
            np.zeros(data.test.num_rows, np.int32),
        )
    }
    update_data = load_update_data(store)
    chosen = [strategies.get(n) for n in strategies.names()]
    params = {s.name: s.make_params() for s in chosen}
    rows: dict[str, dict[str, Any]] = {}

    def record(strategy: Any, result: Any) -> None:
        outcome = commit(store, update_data, strategy.name, params[strategy.name], seed, result, "never")
        rows[strategy.name] = {
            "strategy": strategy.name,
            "test_accuracy": outcome.metrics["test_accuracy"],
            "test_log_loss": outcome.metrics["test_log_loss"],
            "train_seconds": outcome.train_seconds,
            "members": outcome.members,
            "version": outcome.version,
        }
        if on_result:
            on_result(rows[strategy.name])

    if runner is None:
        current = load_candidate(store, update_data.parent)
        for s in chosen:
            record(s, run_strategy(update_data, current, s, params[s.name], seed, test))
    else:
        from cluster.pool import Job

        runner(
            update_data,
            candidate_files(store, update_data.parent),
            [Job(s, params[s.name], seed) for s in chosen],
            extra_eval=test,
            on_done=lambda job, result: record(job.strategy, result),
        )
    results = [rows[s.name] for s in chosen]
    report = store.write_report(
        f"demo-{utc_stamp()}",
        {
            "results.parquet": table_to_bytes(pa.Table.from_pylist(results)),
            "report.md": render_table(
                results, f"old model: {first.version}, trained in {first.train_seconds:.2f} s"
            ).encode(),
        },
    )
    return store_uri, results, report


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
