"""Data-parallel updates: model averaging keeps accuracy; bagging adds one member per shard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.storage import Store
from trainer.cli import main
from trainer.commands import ingest_files, init_store
from trainer.loop import LoopConfig


def _drift_store(tmp_path: Path, n: int = 3000) -> str:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=2 * n, n_features=10, n_informative=6, random_state=5)
    x[n:, :3] += 0.8
    uri = str(tmp_path / "store")
    for name, part in (("old", slice(0, n)), ("new", slice(n, None))):
        cols = {f"x{i}": x[part, i] for i in range(10)}
        pq.write_table(pa.table({**cols, "y": y[part].astype(np.int64)}), tmp_path / f"{name}.parquet")
    init_store(uri, str(tmp_path / "old.parquet"), "y", loop=LoopConfig(epochs=10))
    ingest_files(uri, [str(tmp_path / "new.parquet")])
    return uri


def _json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


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
    assert manifest.execution == {"mode": "model_averaging", "actors": 2, "sync_steps": 20}
    assert Store.open(store).manifest(local["version"]).execution == {"mode": "local"}


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
