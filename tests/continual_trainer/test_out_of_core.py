"""Updates above the memory budget: strategies that can train on rows read from the store a
chunk at a time do, the others say so in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import continual_trainer as ct
from continual_trainer import strategies
from continual_trainer.cli import main
from continual_trainer.data.errors import UserError
from continual_trainer.strategies import base
from tests.conftest import make_table


@pytest.fixture
def stores(tmp_path: Path) -> tuple[str, str]:
    """Two copies of a store with a first batch and two new ones (row groups of 100 rows)."""
    paths = []
    for i, n in enumerate((600, 800, 800)):
        path = tmp_path / f"b{i}.parquet"
        pq.write_table(make_table(n=n, seed=i), path, row_group_size=100)
        paths.append(str(path))
    uris = []
    for name in ("a", "b"):
        uri = str(tmp_path / name)
        assert main(["init", "--store", uri, "--data", paths[0], "--label", "y", "--epochs", "5"]) == 0
        assert main(["ingest", "--store", uri, *paths[1:]]) == 0
        uris.append(uri)
    return uris[0], uris[1]


def _update(uri: str, capsys, *extra: str) -> dict:
    capsys.readouterr()
    argv = ["update", "--store", uri, "--strategy", "finetune_all", "--set", "epochs=10", "--json", *extra]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_an_update_over_the_budget_trains_from_the_store_as_well(stores, capsys, monkeypatch) -> None:
    in_memory = _update(stores[0], capsys)
    monkeypatch.setattr(base, "train", lambda *a, **k: pytest.fail("the rows were trained in memory"))
    pieces = _update(stores[1], capsys, "--memory-budget", "1KB", "--promote", "never")
    a, b = in_memory["metrics"]["holdout_accuracy"], pieces["metrics"]["holdout_accuracy"]
    assert b > 0.75 and abs(a - b) < 0.03, (a, b)
    assert pieces["metrics"]["holdout_rows"] == in_memory["metrics"]["holdout_rows"]  # the same held-out rows
    # scored alike, a chunk at a time (sums over chunks round differently in the last digits on some CPUs)
    assert pieces["current_metrics"] == pytest.approx(in_memory["current_metrics"], rel=1e-7)
    # Recency weighting and fitted ensemble weights read the same way; importance weighting
    # needs every old row at once.
    ct.open_store(stores[1]).update(
        "ensemble_all", memory_budget="1KB", epochs=2, ensemble_weights="fitted", promote="never"
    )
    ct.open_store(stores[1]).update("fresh_all", memory_budget="1KB", epochs=3, weighting="recency", promote="never")
    # Early stopping on a share of the training rows set aside (and read into memory).
    ct.open_store(stores[1]).update("finetune_new", memory_budget="1KB", epochs=50, patience=2, promote="never")
    with pytest.raises(UserError, match=r"weighting=importance .* above the memory budget"):
        ct.open_store(stores[1]).update("finetune_all", memory_budget=1000, weighting="importance", promote="never")


@pytest.fixture
def in_memory_only():
    """A strategy of a user's that declares nothing: it needs its rows in memory."""
    from continual_trainer.strategies import registry

    def whole_rows(inputs, params):
        assert not isinstance(inputs.new, base.StoredRows)
        return inputs.current

    strategies.register("whole_rows", strategies.get("keep").params, "test: needs its rows in memory")(whole_rows)
    yield "whole_rows"
    registry._REGISTRY.remove("whole_rows")


def test_an_update_that_cannot_read_in_pieces_says_so(stores, capsys, in_memory_only: str) -> None:
    capsys.readouterr()
    argv = ["update", "--store", stores[0], "--strategy", in_memory_only, "--memory-budget", "1KB"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "over --memory-budget" in err and "finetune_all" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:
        main(["update", "--store", stores[0], "--strategy", "finetune_all", "--memory-budget", "lots"])
    assert exit_.value.code == 2
    assert "not a size" in capsys.readouterr().err
    with pytest.raises(UserError, match="memory_budget"):
        ct.open_store(stores[0]).update("finetune_all", memory_budget="-1GB")


def test_regression_above_the_budget_is_scored_alike(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=1500, n_features=6, noise=5.0, random_state=0)
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"f{i}" for i in range(6)]).assign(target=y * 100)
    outcomes = []
    for name in ("memory", "pieces"):
        store = ct.init_store(str(tmp_path / name), frame.iloc[:500], "target", epochs=5)
        store.ingest(frame.iloc[500:])
        budget = "1KB" if name == "pieces" else None
        outcomes.append(store.update("finetune_all", memory_budget=budget, epochs=5, promote="never"))
    memory, pieces = outcomes
    assert pieces.current_metrics == pytest.approx(memory.current_metrics, rel=1e-7)
    assert abs(pieces.metrics["holdout_rmse"] - memory.metrics["holdout_rmse"]) < 0.2 * memory.metrics["holdout_rmse"]
    # Dark experience replay's regression form (one mixed target for memory rows) in pieces too.
    der = [ct.open_store(str(tmp_path / name)) for name in ("memory", "pieces")]
    a = der[0].update("der", epochs=5, promote="never").metrics["holdout_rmse"]
    b = der[1].update("der", memory_budget="1KB", epochs=5, promote="never").metrics["holdout_rmse"]
    assert abs(a - b) < 0.2 * a, (a, b)


def test_metrics_from_compact_parts_match_scikit_learn() -> None:
    import numpy as np
    from sklearn.metrics import log_loss, roc_auc_score

    from continual_trainer.trainer.evaluate import binary_auc, class_parts, join_parts, score_classes

    rng = np.random.default_rng(0)
    for n, k, ties in ((2000, 2, False), (3000, 2, True), (1500, 4, False)):
        y = rng.integers(0, k, n)
        p = rng.dirichlet(np.ones(k), n) + np.eye(k)[y] * 0.3
        p = np.round(p, 1) + 1e-3 if ties else p
        p = p / p.sum(axis=1, keepdims=True)
        whole = score_classes(p, y)
        assert whole["accuracy"] == float(np.mean(p.argmax(axis=1) == y))
        assert abs(whole["log_loss"] - log_loss(y, p, labels=list(range(k)))) < 1e-6
        auc = roc_auc_score(y, p[:, 1]) if k == 2 else roc_auc_score(y, p, multi_class="ovr")
        assert abs(whole["roc_auc"] - auc) < 1e-6
        if k == 2:
            assert abs(binary_auc(y, p[:, 1]) - roc_auc_score(y, p[:, 1])) < 1e-12
        from continual_trainer.trainer.evaluate import class_metrics

        pieces = join_parts([class_parts(p[a : a + 700], y[a : a + 700]) for a in range(0, n, 700)])
        assert class_metrics(pieces, k) == whole  # scored in pieces: the same numbers


def test_a_sweep_above_the_budget_reads_the_store_in_pieces(stores, capsys, in_memory_only: str) -> None:
    spec = {"strategies": ["keep", "finetune_all", "fresh_new"], "params": {"epochs": 3}, "seeds": [0]}
    store = ct.open_store(stores[0])  # the first store wins a version; the second still has new batches
    result = store.sweep(spec, memory_budget="1KB", promote_best=True)
    assert result.finished == 3 and not result.failures
    assert store.last_outcome is not None and store.last_outcome.strategy in ("keep", "finetune_all", "fresh_new")
    with pytest.raises(UserError, match="over --memory-budget"):
        ct.open_store(stores[1]).sweep(
            {"strategies": ["finetune_all", in_memory_only], "seeds": [0]}, memory_budget="1KB"
        )


def test_replay_above_the_budget_streams_the_new_rows_and_keeps_its_memory(stores, capsys, monkeypatch) -> None:
    from continual_trainer.data.storage import Store
    from continual_trainer.strategies.memory import Memory
    from continual_trainer.versions import stored_candidate

    def replay(uri: str, *extra: str) -> dict:
        capsys.readouterr()
        argv = ["update", "--store", uri, "--strategy", "replay", "--set", "epochs=10", "--json", *extra]
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out)

    in_memory = replay(stores[0], "--set", "memory_size=150")
    monkeypatch.setattr(base, "train", lambda *a, **k: pytest.fail("the rows were trained in memory"))
    pieces = replay(stores[1], "--set", "memory_size=150", "--memory-budget", "1KB")
    a, b = in_memory["metrics"]["holdout_accuracy"], pieces["metrics"]["holdout_accuracy"]
    assert b > 0.75 and abs(a - b) < 0.05, (a, b)
    seen = []
    for uri, outcome in ((stores[0], in_memory), (stores[1], pieces)):
        store = Store.open(uri)
        memory = Memory.from_state(stored_candidate(store, outcome["version"]).load().state)
        assert memory is not None and len(memory) == 150
        # Filled from the old batch, then offered the new ones: rows of every batch.
        assert set(np.unique(memory.rows.order)) == {0, 1, 2}
        seen.append(memory.seen)
    assert seen[0] == seen[1] > 1500  # every training row offered, in memory or a chunk at a time
    # The next update replays the memory the version keeps (its old rows are not read: see reads_old).
    more = Path(stores[1]).parent / "more.parquet"
    pq.write_table(make_table(n=400, seed=7), more, row_group_size=100)
    assert main(["ingest", "--store", stores[1], str(more)]) == 0
    replay(stores[1], "--set", "memory_size=150", "--memory-budget", "1KB")


@pytest.mark.parametrize("name", strategies.names(in_pieces=True))
def test_every_strategy_that_declares_it_trains_from_the_store_alike(name: str, stores, capsys, monkeypatch) -> None:
    def update(uri: str, *extra: str) -> dict:
        capsys.readouterr()
        argv = ["update", "--store", uri, "--strategy", name, "--promote", "never", "--json", *extra]
        assert main([*argv, "--set", "epochs=8"] if name != "keep" else argv) == 0
        return json.loads(capsys.readouterr().out)

    in_memory = update(stores[0])
    monkeypatch.setattr(base, "train", lambda *a, **k: pytest.fail("the rows were trained in memory"))
    pieces = update(stores[1], "--memory-budget", "1KB")
    a, b = in_memory["metrics"]["holdout_accuracy"], pieces["metrics"]["holdout_accuracy"]
    assert abs(a - b) < 0.06, (a, b)
    assert pieces["current_metrics"] == pytest.approx(in_memory["current_metrics"], rel=1e-7)
