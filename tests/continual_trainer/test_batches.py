"""`ctrain batches` lists a store's batches; `ctrain drop` retires one that should never have
been learned: kept byte for byte and in every lineage, never trained on or scored again."""

from __future__ import annotations

import json

import pyarrow as pa

from continual_trainer.cli import main
from continual_trainer.data.storage import Store
from tests.conftest import make_table


def _json(capsys, *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    out, _ = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1])


def test_a_dropped_batch_is_kept_but_never_trained_on_again(tiny_store: str, write_parquet, capsys) -> None:
    store = Store.open(tiny_store)
    first, bad = store.batch_ids()  # the tiny store's new batch stands for one that should not be learned
    data = store.read_batch(bad)
    # Learned first, as in the wedge the issue describes (keep --promote always).
    assert _json(capsys, "update", "--store", tiny_store, "--strategy", "keep", "--promote", "always")[0] == 0

    code, shown = _json(capsys, "drop", "--store", tiny_store, bad[-6:], "--reason", "mislabelled")
    assert code == 0 and shown == {"batch": bad, "retired": True}
    code, again = _json(capsys, "drop", "--store", tiny_store, bad)
    assert code == 2 and "retired already" in again["error"]
    assert store.read_batch(bad) == data  # kept byte for byte
    assert any(e.get("batch") == bad and e.get("reason") == "mislabelled" for e in store.events("drop"))

    code, listed = _json(capsys, "batches", "--store", tiny_store)
    rows = {r["batch"]: r for r in listed["batches"]}
    assert rows[bad]["retired"]["reason"] == "mislabelled" and rows[bad]["learned_by_current"]
    assert rows[first]["retired"] is None

    newer = write_parquet(make_table(seed=9, shift=0.2), "newer.parquet")
    assert main(["ingest", "--store", tiny_store, newer]) == 0
    code, out = _json(
        capsys,
        "update",
        "--store",
        tiny_store,
        "--strategy",
        "finetune_all",
        "--set",
        "epochs=2",
        "--promote",
        "always",
    )
    assert code == 0, out
    manifest = store.manifest(out["version"])
    assert bad not in manifest.batches_trained and bad not in manifest.batches_seen
    assert not any(bad in key for key in out["metrics"])  # not scored either
    assert store.verify() == ([], [])


def test_dropping_every_new_batch_leaves_nothing_to_update(tiny_store: str, capsys) -> None:
    (_, new) = Store.open(tiny_store).batch_ids()
    assert main(["drop", "--store", tiny_store, new]) == 0
    code, out = _json(capsys, "update", "--store", tiny_store, "--strategy", "finetune_new")
    assert code == 0 and out["version"] is None and "no new batches" in out["reason"]
    code, out = _json(capsys, "drop", "--store", tiny_store, "zzz")
    assert code == 2 and "names no batch" in out["error"]


def test_user_text_is_escaped_on_the_terminal(tiny_store: str, write_parquet, capsys) -> None:
    """A file name (or column name) with a newline or a terminal escape is printed escaped."""
    path = write_parquet(make_table(seed=7), "evil\x1b[2J\nname.parquet")
    assert main(["ingest", "--store", tiny_store, path]) == 0
    assert main(["batches", "--store", tiny_store]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("\\x1b[2J\\nname.parquet") == 2
    bad = make_table(seed=8).append_column("bad\x1b]0;owned\x07col", pa.array([1.0] * 120))
    assert main(["ingest", "--store", tiny_store, write_parquet(bad, "bad.parquet")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "bad\\x1b]0;owned\\x07col" in err
