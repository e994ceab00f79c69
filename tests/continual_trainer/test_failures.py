"""Failures that are not a user's mistake are one line too: the machine's (a read-only or full
disk) exit 2, anything unexpected exit 1; with --json every failure prints its JSON object, and
the traceback shows only under CTRAIN_DEBUG=1."""

from __future__ import annotations

import errno
import json

import pytest

from continual_trainer.cli import main


def _run(capsys, *argv: str) -> tuple[int, list[str], dict]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    return code, err.strip().splitlines(), json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("number", "text"), [(errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left on device")]
)
def test_a_read_only_or_full_disk_is_one_line(
    number: int, text: str, tiny_store: str, write_parquet, capsys, monkeypatch
) -> None:
    from tests.conftest import make_table

    new = write_parquet(make_table(seed=3), "new.parquet")

    def refuse(directory: str, data: bytes) -> str:
        raise OSError(number, text, f"{directory}/.tmp-x")

    monkeypatch.setattr("continual_trainer.data.store.core.write_temp", refuse)  # locks, claims and files alike
    for argv in (
        ["ingest", "--store", tiny_store, new],
        ["update", "--store", tiny_store, "--strategy", "finetune_new", "--set", "epochs=1"],
        ["gc", "--store", tiny_store],
    ):
        code, err, shown = _run(capsys, *argv)
        assert code == 2 and len(err) == 1 and text in err[0], (argv, err)
        assert shown == {"error": err[0].removeprefix("ctrain: error: "), "exit_code": 2}


def test_an_unexpected_error_is_one_line_with_exit_1_and_a_traceback_only_when_asked(
    tiny_store: str, capsys, monkeypatch
) -> None:
    def broken(uri: str) -> list:
        raise RuntimeError("the history went missing\nsecond line")

    monkeypatch.setattr("continual_trainer.records.history", broken)
    code, err, shown = _run(capsys, "history", "--store", tiny_store)
    assert code == 1 and err == ["ctrain: error: unexpected RuntimeError: the history went missing"]
    assert shown["exit_code"] == 1
    monkeypatch.setenv("CTRAIN_DEBUG", "1")
    code, err, _ = _run(capsys, "history", "--store", tiny_store)
    assert code == 1 and err[0].startswith("Traceback") and err[-1].startswith("ctrain: error: unexpected")


@pytest.mark.parametrize(
    ("column", "values", "expected"),
    [
        ("f0", "uint64-max", "equal to uint64's maximum (18446744073709551615, the first in row 0)"),
        ("f1", "int64-min", "equal to int64's minimum"),
        ("f2", "3.3e38", "1 value(s) beyond ±1e15 (e.g. 3.3e+38 in row 0)"),
    ],
)
def test_values_that_pass_as_finite_but_wedge_training_are_refused_at_ingest(
    column: str, values: str, expected: str, tiny_store: str, write_parquet, capsys
) -> None:
    """Before: accepted, and every later update that read the batch diverged, for ever."""
    import numpy as np
    import pyarrow as pa

    from continual_trainer.data.storage import Store
    from tests.conftest import make_table

    table = make_table(seed=4)
    n = table.num_rows
    if values == "uint64-max":
        array = pa.array(np.where(np.arange(n) < 3, np.iinfo(np.uint64).max, 5).astype(np.uint64))
    elif values == "int64-min":
        array = pa.array(np.where(np.arange(n) < 2, np.iinfo(np.int64).min, 5).astype(np.int64))
    else:
        array = pa.array(np.where(np.arange(n) == 0, 3.3e38, 0.5))
    table = table.set_column(table.column_names.index(column), column, array)
    before = Store.open(tiny_store).batch_ids()
    code, err, _ = _run(capsys, "ingest", "--store", tiny_store, write_parquet(table, "poison.parquet"))
    assert code == 2 and len(err) == 1 and f"feature {column!r}" in err[0] and expected in err[0], err
    assert Store.open(tiny_store).batch_ids() == before


def test_report_never_writes_into_the_store(tiny_store: str, tmp_path, capsys) -> None:
    """Before: `--out <store>` and `--out <store>/models/x` were accepted, and through a link in
    the out folder the report overwrote store.json."""
    import os
    from pathlib import Path

    from continual_trainer.data.storage import Store

    meta = Path(tiny_store) / "store.json"
    before = meta.read_bytes()
    for out in (tiny_store, os.path.join(tiny_store, "models", "x")):
        code, err, _ = _run(capsys, "report", "--store", tiny_store, "--out", out)
        assert code == 2 and "is inside the store" in err[0], err
    linked = tmp_path / "out"
    linked.mkdir()
    os.symlink(os.path.join(tiny_store, "store.json"), linked / "index.html")
    code, err, _ = _run(capsys, "report", "--store", tiny_store, "--out", str(linked))
    assert code == 2 and "leads into the store" in err[0], err
    assert meta.read_bytes() == before
    assert Store.open(tiny_store).verify()[0] == []


def test_gc_never_follows_a_link_out_of_the_store(tiny_store: str, tmp_path, capsys) -> None:
    import os
    import shutil

    from continual_trainer.data.storage import Store

    assert (
        main(["update", "--store", tiny_store, "--strategy", "finetune_new", "--set", "epochs=1", "--promote", "never"])
        == 0
    )
    store = Store.open(tiny_store)
    (unpromoted,) = [v for v in store.versions() if v != store.current()]
    outside = tmp_path / "elsewhere"
    shutil.move(os.path.join(tiny_store, "models", unpromoted), outside)
    os.symlink(outside, os.path.join(tiny_store, "models", unpromoted))
    kept = sorted(os.listdir(outside))
    code, _, shown = _run(capsys, "gc", "--store", tiny_store, "--keep", "0")
    assert code == 0 and shown["deleted"] == []
    assert sorted(os.listdir(outside)) == kept  # nothing outside the store deleted


def test_an_unreachable_mlflow_from_the_environment_warns_and_the_update_is_done(
    tiny_store: str, capsys, caplog, monkeypatch
) -> None:
    """Before: MLflow retried the closed port for about four minutes, then the update failed with
    an error naming --mlflow, which was never given."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    argv = ["update", "--store", tiny_store, "--strategy", "finetune_new", "--set", "epochs=1", "--promote", "never"]
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["version"], err
    warned = caplog.text  # `ctrain: WARNING: ...` on stderr outside pytest
    assert "MLFLOW_TRACKING_URI http://127.0.0.1:9: cannot use this tracking store" in warned, (warned, err)
    assert "--mlflow" not in warned + err
    code = main([*argv, "--mlflow", "http://127.0.0.1:9"])  # asked for explicitly: refused before any work
    assert code == 2 and "--mlflow http://127.0.0.1:9" in capsys.readouterr().err


def test_a_damaged_stream_event_or_trial_record_is_skipped_with_one_warning(tiny_store: str, tmp_path, caplog) -> None:
    """Before: one event file of the wrong shape made `stream --trigger performance` and `report`
    crash on every run."""
    from pathlib import Path

    from continual_trainer.data.storage import Store

    events = Path(tiny_store) / "stream" / "events"
    events.mkdir(parents=True)
    good = {"file": "a.parquet", "sha256": "ab", "status": "kept", "drift": {"accuracy": 0.9}}
    (events / "20260101-000000-000-a.json").write_text(json.dumps(good))
    (events / "20260101-000001-000-b.json").write_text(json.dumps({**good, "drift": "oops", "version": 7}))
    trials = Path(tiny_store) / "sweeps" / "s1" / "trials"
    trials.mkdir(parents=True)
    (trials / "t1.json").write_text(json.dumps({"trial_id": "t1", "strategy": "keep", "params": "{}", "seed": 0}))
    (trials / "t2.json").write_text(json.dumps({"trial_id": "t2", "strategy": "keep", "params": 5, "seed": 0}))
    store = Store.open(tiny_store)
    assert store.stream_events() == [good] and store.last_stream_event() == good
    assert list(store.trial_records("s1")) == ["t1"]
    assert caplog.text.count("is damaged") == 2 and "its 'drift' is a str" in caplog.text
    assert main(["report", "--store", tiny_store, "--out", str(tmp_path / "report")]) == 0


def test_links_in_the_inbox_are_skipped(tiny_store: str, tmp_path, write_parquet, caplog) -> None:
    """Before: a link dropped in the inbox copied any readable file into the store's quarantine."""
    import os

    from tests.conftest import make_table

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the store")
    os.symlink(secret, inbox / "x.parquet")
    os.symlink(write_parquet(make_table(seed=5), "real.parquet"), inbox / "y.parquet")
    argv = ["stream", "--store", tiny_store, "--inbox", str(inbox), "--once", "--policy", "keep", "--local"]
    assert main(argv) == 0
    assert caplog.text.count("is a symbolic link; skipped") == 2
    store = os.path.join(tiny_store, "quarantine")
    assert not os.path.exists(store) or not os.listdir(store)
