"""The same store, ingest, update, predict, sweep and stream flows on s3:// (moto on loopback)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from continual_trainer.data.storage import Store
from tests.conftest import make_table
from tests.continual_trainer.test_reliability import check_store, race


@pytest.fixture
def s3_store(s3_server, write_parquet, capsys) -> str:
    uri = s3_server()
    old = write_parquet(make_table(seed=0), "old.parquet")
    assert main(["init", "--store", uri, "--data", old, "--label", "y", "--model", "mlp:8,4", "--epochs", "3"]) == 0
    assert main(["ingest", "--store", uri, write_parquet(make_table(seed=1, shift=0.4), "new.parquet")]) == 0
    capsys.readouterr()
    return uri


def test_store_flow_on_s3(s3_store: str, write_parquet, tmp_path: Path, capsys) -> None:
    assert (
        main(["update", "--store", s3_store, "--strategy", "ensemble_all", "--set", "epochs=3", "--promote", "always"])
        == 0
    )
    assert main(["history", "--store", s3_store, "--json"]) == 0
    assert '"current": true' in capsys.readouterr().out
    src = write_parquet(make_table(seed=4).drop_columns(["y"]), "score.parquet")
    assert main(["predict", "--store", s3_store, "--data", src, "--out", str(tmp_path / "p.parquet")]) == 0
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 120
    check_store(s3_store)


def test_bad_input_is_quarantined_on_s3(s3_store: str, write_parquet, capsys) -> None:
    store = Store.open(s3_store)
    before = (store.batch_ids(), store.versions(), store.current())
    assert main(["ingest", "--store", s3_store, write_parquet(b"PAR1 not really", "bad.parquet")]) == 2
    err = capsys.readouterr().err
    assert "bad.parquet: not a Parquet file" in err and len(err.splitlines()) == 1
    assert "endpoint_override" not in err
    after = Store.open(s3_store)
    assert (after.batch_ids(), after.versions(), after.current()) == before
    ((name, data, reason),) = after.quarantined()
    assert name == "bad.parquet" and data == b"PAR1 not really" and "not a Parquet file" in reason


def test_unreachable_store_is_one_clear_line(capsys) -> None:
    uri = "s3://nowhere/store?endpoint_override=127.0.0.1:9&scheme=http&connect_timeout=1&request_timeout=1"
    assert main(["history", "--store", uri]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "s3://nowhere/store" in err


@pytest.mark.slow
@pytest.mark.ray
def test_sweep_on_s3(ray_cluster, s3_store: str) -> None:
    from continual_trainer.cluster.executor import RayExecutor
    from continual_trainer.sweep import SweepSpec, run_sweep

    spec = SweepSpec.parse("strategies: [keep, fresh_all]\nparams: {epochs: 2}")
    result = run_sweep(Store.open(s3_store), RayExecutor(), spec)
    assert result.finished == 2
    files = Store.open(s3_store).report_files(result.sweep_id)
    assert {"results.parquet", "plots/accuracy_by_strategy.png"} <= set(files)


def test_stream_into_an_s3_store(s3_store: str, tmp_path: Path) -> None:
    from continual_trainer.executor import LocalExecutor
    from continual_trainer.stream import Policy, run_stream

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(make_table(seed=8, shift=0.2), inbox / "a.parquet")
    (inbox / "b.parquet").write_bytes(b"junk")
    policy = Policy("finetune_new", values={"epochs": "2"})
    events = run_stream(s3_store, str(inbox), policy, LocalExecutor(), once=True)
    assert [e.status for e in events][1] == "rejected" and events[0].batch
    assert run_stream(s3_store, str(inbox), policy, LocalExecutor(), once=True) == []
    # Above the memory budget: the trigger and the candidates read the S3 store in pieces.
    pq.write_table(make_table(seed=9, shift=0.3), inbox / "c.parquet")
    pieces = Policy("best", ["finetune_all", "replay"], values={"epochs": "2"}, memory_budget=1000)
    (event,) = run_stream(s3_store, str(inbox), pieces, LocalExecutor(), once=True)
    assert event.status in ("updated", "kept") and len(event.candidates) == 2, event.reason
    check_store(s3_store)


def test_stream_from_an_s3_inbox(s3_store: str, s3_server) -> None:
    from continual_trainer.data.parquet import resolve, table_to_bytes
    from continual_trainer.executor import LocalExecutor
    from continual_trainer.stream import Policy, run_stream

    inbox = s3_server("inbox")
    fs, root = resolve(inbox)
    fs.create_dir(root)
    with fs.open_output_stream(f"{root}/a.parquet") as f:
        f.write(table_to_bytes(make_table(seed=12, shift=0.3)))
    policy = Policy("finetune_new", values={"epochs": "2"})
    (event,) = run_stream(s3_store, inbox, policy, LocalExecutor(), once=True)
    assert event.file == "a.parquet" and event.batch and event.status in ("updated", "kept")
    check_store(s3_store)


def test_conditional_writes_on_s3(s3_store: str) -> None:
    from continual_trainer.data.objectstore import S3Conditional

    s3 = S3Conditional.for_uri(s3_store)
    assert s3 is not None and S3Conditional.for_uri("/local/path") is None
    assert s3.put_if_absent("probe", b"one") and not s3.put_if_absent("probe", b"two")
    data, etag = s3.get("probe")
    assert data == b"one"
    assert s3.put_if_unchanged("probe", b"three", etag)
    assert not s3.put_if_unchanged("probe", b"four", etag)  # changed since it was read
    assert s3.get("probe")[0] == b"three" and s3.get("missing") is None


@pytest.mark.slow
def test_two_updaters_racing_on_s3_one_wins_none_is_lost(s3_store: str, tmp_path: Path) -> None:
    import sys

    cmd = [sys.executable, "-m", "continual_trainer", "update", "--store", s3_store, "--set", "epochs=3"]
    strategies = ("fresh_all", "finetune_all", "ensemble_all")
    results = race(
        s3_store, [[*cmd, "--strategy", s, "--promote", "always", "--json"] for s in strategies], tmp_path / "go"
    )
    assert sorted(r["promoted"] for r in results) == [False, False, True]
    store = Store.open(s3_store)
    winner = next(r["version"] for r in results if r["promoted"])
    assert store.current() == winner and {r["version"] for r in results} <= set(store.versions())
    check_store(s3_store)


def test_an_update_above_the_memory_budget_reads_an_s3_store_in_pieces(s3_store: str, write_parquet, capsys) -> None:
    import json

    path = write_parquet(make_table(n=600, seed=2), "more.parquet")
    pq.write_table(pq.read_table(path), path, row_group_size=100)
    assert main(["ingest", "--store", s3_store, path]) == 0
    capsys.readouterr()
    argv = ["update", "--store", s3_store, "--strategy", "finetune_all", "--set", "epochs=3", "--json"]
    assert main([*argv, "--memory-budget", "1KB", "--promote", "never"]) == 0
    pieces = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    memory = json.loads(capsys.readouterr().out)
    assert pieces["current_metrics"] == pytest.approx(memory["current_metrics"], rel=1e-7)  # read from S3 in chunks
    assert abs(pieces["metrics"]["holdout_accuracy"] - memory["metrics"]["holdout_accuracy"]) < 0.1
    check_store(s3_store)


def test_an_s3_store_crosses_to_other_processes_as_its_uri(s3_store: str) -> None:
    import pickle

    store = Store.open(s3_store)
    copy = pickle.loads(pickle.dumps(store))  # as Ray ships it to a worker: a fresh S3 client there
    assert copy.uri == store.uri and copy.meta == store.meta
    assert copy.batch_ids() == store.batch_ids() and copy.current() == store.current()
    assert copy.read_batch(copy.batch_ids()[0]) == store.read_batch(store.batch_ids()[0])
