"""Data-parallel updates: model averaging keeps accuracy; bagging adds one member per shard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from continual_trainer.data.storage import Store
from continual_trainer.store_setup import ingest_files, init_store
from continual_trainer.trainer.loop import LoopConfig


def _drift_store(tmp_path: Path, n: int = 3000, row_group: int | None = None, uri: str | None = None) -> str:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=2 * n, n_features=10, n_informative=6, random_state=5)
    x[n:, :3] += 0.8
    uri = uri or str(tmp_path / "store")
    for name, part in (("old", slice(0, n)), ("new", slice(n, None))):
        cols = {f"x{i}": x[part, i] for i in range(10)}
        table = pa.table({**cols, "y": y[part].astype(np.int64)})
        pq.write_table(table, tmp_path / f"{name}.parquet", row_group_size=row_group)
    init_store(uri, str(tmp_path / "old.parquet"), "y", loop=LoopConfig(epochs=10))
    ingest_files(uri, [str(tmp_path / "new.parquet")])
    return uri


def _json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.ray
def test_model_averaging_matches_single_process_accuracy(ray_cluster, tmp_path: Path, capsys) -> None:
    store = _drift_store(tmp_path)
    common = [
        "update",
        "--store",
        store,
        "--strategy",
        "finetune_all",
        "--set",
        "epochs=10",
        "--promote",
        "never",
        "--json",
    ]
    assert main(common) == 0
    local = _json(capsys.readouterr().out)
    assert main([*common, "--actors", "2", "--sync-steps", "20"]) == 0
    averaged = _json(capsys.readouterr().out)
    assert abs(averaged["metrics"]["holdout_accuracy"] - local["metrics"]["holdout_accuracy"]) <= 0.02
    manifest = Store.open(store).manifest(averaged["version"])
    started = manifest.execution.pop("start_seconds")
    assert 0 < started <= manifest.train_seconds
    assert manifest.execution == {"mode": "model_averaging", "actors": 2, "sync_steps": 20}
    local_run = {"mode": "local", "training": [{"epochs": 10, "stopped": None, "best_epoch": None}]}
    assert Store.open(store).manifest(local["version"]).execution == local_run


@pytest.mark.slow
@pytest.mark.ray
def test_above_the_memory_budget_each_actor_reads_its_own_row_groups(ray_cluster, tmp_path: Path, capsys) -> None:
    store = _drift_store(tmp_path, row_group=250)
    common = ["update", "--store", store, "--set", "epochs=10", "--promote", "never", "--json"]
    assert main([*common, "--strategy", "finetune_all"]) == 0
    local = _json(capsys.readouterr().out)
    pieces = [*common, "--memory-budget", "1KB", "--actors", "2"]
    assert main([*pieces, "--strategy", "finetune_all", "--sync-steps", "20"]) == 0
    averaged = _json(capsys.readouterr().out)
    assert abs(averaged["metrics"]["holdout_accuracy"] - local["metrics"]["holdout_accuracy"]) <= 0.02
    # The holdout, scored in pieces, each actor its row groups: the same to rounding (sums in another order).
    assert averaged["current_metrics"] == pytest.approx(local["current_metrics"], rel=1e-6)
    assert Store.open(store).manifest(averaged["version"]).execution["mode"] == "model_averaging"
    assert main([*pieces, "--strategy", "ensemble_all"]) == 0
    bagged = _json(capsys.readouterr().out)
    assert bagged["members"] == 3 and bagged["metrics"]["holdout_accuracy"] > 0.8
    # A sweep's trials on Ray Tune reading the store themselves: test_two_nodes.py, on S3.


@pytest.mark.slow
@pytest.mark.ray
def test_an_altered_batch_stops_the_actors_before_anything_is_written(ray_cluster, tmp_path: Path, capsys) -> None:
    store = _drift_store(tmp_path, n=600, row_group=100)
    path = tmp_path / "store" / "batches" / Store.open(store).batch_ids()[1] / "data.parquet"
    pq.write_table(pq.read_table(path).slice(1), path, row_group_size=100)  # valid Parquet, not the stored file
    versions = Store.open(store).versions()
    argv = ["update", "--store", store, "--strategy", "finetune_all", "--memory-budget", "1KB", "--json"]
    for strategy in ("finetune_all", "ensemble_all"):  # averaging and bagging: checked once, by the coordinator
        assert main([*argv, "--strategy", strategy, "--actors", "2"]) == 2
        assert "fails its sha256 check" in capsys.readouterr().err
    assert Store.open(store).versions() == versions


@pytest.mark.slow
@pytest.mark.ray
def test_bagging_adds_a_member_per_shard_and_others_refuse(ray_cluster, tiny_store: str, capsys) -> None:
    assert (
        main(
            [
                "update",
                "--store",
                tiny_store,
                "--strategy",
                "ensemble_all",
                "--set",
                "epochs=5",
                "--actors",
                "2",
                "--promote",
                "never",
                "--json",
            ]
        )
        == 0
    )
    out = _json(capsys.readouterr().out)
    assert out["members"] == 3
    assert Store.open(tiny_store).manifest(out["version"]).execution == {"mode": "bagging", "actors": 2}
    assert main(["update", "--store", tiny_store, "--strategy", "graft", "--actors", "2"]) == 2
    err = capsys.readouterr().err
    assert "graft does not train data-parallel; these do: finetune_new" in err and len(err.splitlines()) == 1


@pytest.mark.ray
@pytest.mark.slow
def test_users_networks_and_columns_on_actors_sweeps_and_streams(ray_cluster, tmp_path: Path, capsys) -> None:
    """A regression store with a categorical column, and a tensor store whose model comes from a
    builder in the checkout (examples/digits.py): `--actors` (averaging and bagging), a sweep on
    Tune and the stream's best-of policy on actors all run them, with the task's own metrics."""
    from continual_trainer.cluster.executor import RayExecutor
    from continual_trainer.stream import Policy, run_stream
    from continual_trainer.sweep import SweepSpec, run_sweep
    from tests.continual_trainer.test_bring_your_own import images, tabular

    reg = str(tmp_path / "reg")
    pq.write_table(tabular(400, 0, regression=True), tmp_path / "reg-old.parquet")
    pq.write_table(tabular(400, 1, regression=True), tmp_path / "reg-new.parquet")
    init = ["init", "--store", reg, "--data", str(tmp_path / "reg-old.parquet"), "--label", "y"]
    assert main([*init, "--epochs", "20"]) == 0
    assert main(["ingest", "--store", reg, str(tmp_path / "reg-new.parquet")]) == 0
    capsys.readouterr()
    update = ["update", "--store", reg, "--set", "epochs=5", "--promote", "never", "--actors", "2", "--json"]
    assert main([*update, "--strategy", "finetune_all"]) == 0
    averaged = _json(capsys.readouterr().out)
    assert averaged["metrics"]["holdout_r2"] > 0.5, averaged["metrics"]
    assert main([*update, "--strategy", "ensemble_all"]) == 0
    assert _json(capsys.readouterr().out)["members"] == 3

    spec = SweepSpec.parse("strategies: [fresh_all]\nparams: {epochs: 3}")  # a network built on a worker
    result = run_sweep(Store.open(reg), RayExecutor(), spec)
    table = pq.read_table(Path(result.folder) / "results.parquet")
    assert table.num_rows == 1 and "holdout_rmse" in table.column_names and "holdout_accuracy" not in table.column_names
    assert "plots/rmse_by_strategy.png" in Store.open(reg).report_files(result.sweep_id)

    digits = str(tmp_path / "digits")
    pq.write_table(images(300, 0), tmp_path / "digits-old.parquet")
    argv = ["init", "--store", digits, "--data", str(tmp_path / "digits-old.parquet"), "--label", "digit"]
    assert main([*argv, "--shape", "image=8,8,1", "--model", "examples.digits:cnn", "--epochs", "3"]) == 0
    pq.write_table(images(300, 1, shift=0.1), tmp_path / "digits-new.parquet")
    assert main(["ingest", "--store", digits, str(tmp_path / "digits-new.parquet")]) == 0
    capsys.readouterr()
    argv = ["update", "--store", digits, "--strategy", "finetune_all", "--set", "epochs=2", "--actors", "2", "--json"]
    assert main(argv) == 0
    version = _json(capsys.readouterr().out)["version"]
    assert Store.open(digits).manifest(version).execution["mode"] == "model_averaging"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(images(300, 2, shift=0.2), inbox / "next.parquet")
    policy = Policy("best", ["finetune_new", "ensemble_all"], values={"epochs": "2"})
    (event,) = run_stream(digits, str(inbox), policy, RayExecutor(), once=True)
    assert event.version and Store.open(digits).stream_marker(event.sha256)["version"] == event.version


@pytest.mark.ray
def test_the_holdout_is_scored_by_the_actors_each_its_row_groups(ray_cluster, tmp_path: Path) -> None:
    from continual_trainer.cluster.parallel import ShardedParts, start_trainers
    from continual_trainer.cluster.runtime import kill
    from continual_trainer.data.chunks import StoredRows
    from continual_trainer.trainer.evaluate import class_metrics
    from continual_trainer.trials import stored_parts
    from continual_trainer.versions import stored_candidate

    store = Store.open(_drift_store(tmp_path, n=800, row_group=100))
    current = stored_candidate(store, store.current()).load()
    rows = StoredRows.of(store, store.batch_ids(), "holdout")
    trainers = start_trainers(2)
    try:
        sharded = ShardedParts(trainers, current)(current, rows, 2)
        kill(trainers[1:])  # an actor gone: this process scores instead
        fallback = ShardedParts(trainers, current)(current, rows, 2)
    finally:
        kill(trainers)
    here = stored_parts(current, rows, 2)
    assert len(sharded[0]["y"]) == len(here[0]["y"]) == len(rows) and sharded[1] == here[1] == 0
    assert sorted(sharded[0]["y"]) == sorted(here[0]["y"])  # every row once, in the shards' order
    assert class_metrics(sharded[0], 2) == pytest.approx(class_metrics(here[0], 2), rel=1e-6)
    assert class_metrics(fallback[0], 2) == pytest.approx(class_metrics(here[0], 2), rel=1e-6)
