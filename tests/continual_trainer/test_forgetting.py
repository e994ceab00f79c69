"""Forgetting you can see, and a promotion gate on it: the accuracy matrix along a lineage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from continual_trainer.cli import main
from continual_trainer.data.manifest import Manifest
from continual_trainer.data.storage import Store
from continual_trainer.trainer.forgetting import Gate, forgetting, matrix_row


def concept(n: int, seed: int, reversed_: bool) -> pa.Table:
    """Two features; the label is x0 > 0, or the reverse (a concept that flipped)."""
    x = np.random.default_rng(seed).normal(size=(n, 2))
    y = (x[:, 0] > 0) != reversed_
    return pa.table({"x0": x[:, 0], "x1": x[:, 1], "y": y.astype(np.int64)})


def run(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def reversed_store(tmp_path: Path, capsys) -> str:
    store = str(tmp_path / "store")
    pq.write_table(concept(200, 0, False), tmp_path / "a.parquet")
    pq.write_table(concept(800, 1, True), tmp_path / "b.parquet")  # more rows: learning it wins overall
    run(capsys, "init", "--store", store, "--data", str(tmp_path / "a.parquet"), "--label", "y", "--epochs", "30")
    run(capsys, "ingest", "--store", store, str(tmp_path / "b.parquet"))
    return store


def test_a_version_that_forgets_an_earlier_batch_is_shown_and_gated(tmp_path: Path, capsys) -> None:
    store = reversed_store(tmp_path, capsys)
    first, second = Store.open(store).batch_ids()
    update = [
        "update",
        "--store",
        store,
        "--strategy",
        "finetune_new",
        "--set",
        "epochs=40",
        "--set",
        "learning_rate=0.01",
    ]
    gated = run(capsys, *update, "--max-forgetting", "0.2")
    assert not gated["promoted"], gated
    assert f"forgets batch {first}" in gated["reason"] and "--max-forgetting 0.2" in gated["reason"]
    assert gated["metrics"][f"batch_{first}_accuracy"] < 0.5 < gated["metrics"][f"batch_{second}_accuracy"]
    assert gated["metrics"]["holdout_negative_flip_rate"] > 0.1
    flips = run(capsys, *update, "--max-flip-rate", "0.05")
    assert not flips["promoted"] and "negative flip rate" in flips["reason"]
    free = run(capsys, *update)
    assert free["promoted"], free  # better on the whole holdout: without a gate it wins

    rows = {r["version"]: r for r in run(capsys, "history", "--store", store)["versions"]}
    mine = rows[free["version"]]
    assert mine["forgetting_batch"] == first and mine["forgetting"] > 0.4
    assert mine["backward_transfer"] < -0.4 and mine["negative_flip_rate"] > 0.1
    init = next(r for r in rows.values() if r["strategy"] == "init")
    assert init["forgetting"] is None and f"batch_{first}_accuracy" in init["metrics"]
    assert main(["history", "--store", store]) == 0
    assert "forget" in capsys.readouterr().out


def test_forgetting_follows_the_lineage_and_regression_errors() -> None:
    def version(parent: str | None, **scores: float) -> Manifest:
        return Manifest(parent=parent, strategy="x", metrics={f"batch_{b}_accuracy": v for b, v in scores.items()})

    a = version(None, b1=0.9)
    b = version("a", b1=0.95, b2=0.8)
    f = forgetting({"batch_b1_accuracy": 0.7, "batch_b2_accuracy": 0.85, "batch_b3_accuracy": 0.9}, [b, a])
    assert f.batch == "b1" and abs(f.worst - 0.25) < 1e-9 and abs(f.best_before - 0.95) < 1e-9
    assert abs(f.backward_transfer - ((0.7 - 0.9) + (0.85 - 0.8)) / 2) < 1e-9  # against the learner of each
    reg = Manifest(parent=None, strategy="x", metrics={"batch_b1_rmse": 10.0})
    g = forgetting({"batch_b1_rmse": 12.5}, [reg])
    assert matrix_row(reg.metrics) == ("rmse", {"b1": 10.0}) and abs(g.worst - 2.5) < 1e-9
    assert Gate(max_forgetting=3.0).refuses({"batch_b1_rmse": 12.5}, [reg]) is None
    assert "forgets batch b1" in Gate(max_forgetting=2.0).refuses({"batch_b1_rmse": 12.5}, [reg])
    assert forgetting({"batch_b1_accuracy": 0.5}, []).worst is None


def test_the_stream_and_the_api_use_the_same_gate(tmp_path: Path, capsys) -> None:
    import continual_trainer as ct

    store = reversed_store(tmp_path, capsys)
    outcome = ct.open_store(store).update("finetune_new", epochs=40, max_forgetting=0.2)
    assert not outcome.promoted and "forgets batch" in outcome.reason
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(concept(800, 2, True), inbox / "more.parquet")
    argv = ["stream", "--store", store, "--inbox", str(inbox), "--once", "--policy", "finetune_new", "--local"]
    (event,) = run(capsys, *argv, "--set", "epochs=40", "--max-forgetting", "0.2")["events"]
    assert not event["promoted"] and "forgets batch" in event["reason"]
