"""CSV and JSON Lines wherever Parquet is read: init, ingest, predict, split, drift, label and the
stream's inbox. A text file is read with the store's column types (codes stay text, a numeric
column with a word in it is refused naming it and quarantined), kept as the Parquet of its
table, and the same file ingested twice is one batch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continual_trainer.cli import main
from continual_trainer.data.storage import Store
from tests.conftest import make_table


def _csv(table: pa.Table | list[dict], path: Path) -> str:
    rows = table if isinstance(table, list) else table.to_pylist()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _jsonl(table: pa.Table, path: Path) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    return str(path)


def _coded(n: int, seed: int) -> pa.Table:
    """make_table's rows with a categorical column of codes that look like numbers."""
    table = make_table(n=n, seed=seed)
    codes = [("007", "010", "042")[i % 3] for i in range(n)]
    return table.append_column("site", pa.array(codes))


@pytest.mark.slow
def test_every_reading_command_takes_csv_and_json_lines(tmp_path: Path, capsys) -> None:
    store = str(tmp_path / "store")
    first = _csv(_coded(150, 0), tmp_path / "first.csv")
    assert main(["init", "--store", store, "--data", first, "--label", "y", "--epochs", "3", "--model", "mlp:8"]) == 0
    opened = Store.open(store)
    assert opened.schema.column("site").kind == "categorical"  # "007" read as text, not the number 7
    assert opened.schema.column("site").vocabulary == ("007", "010", "042")
    (batch,) = opened.batch_ids()
    assert pq.read_table(pa.BufferReader(opened.read_batch(batch))).num_rows == 150  # kept as Parquet

    second = _jsonl(_coded(90, 1), tmp_path / "second.jsonl")
    assert main(["ingest", "--store", store, second]) == 0
    assert main(["ingest", "--store", store, second]) == 0  # the same file again: one batch
    assert len(Store.open(store).batch_ids()) == 2

    bad = _coded(30, 2).to_pylist()
    bad[4]["f1"] = "n/a"
    capsys.readouterr()
    assert main(["ingest", "--store", store, _csv(bad, tmp_path / "bad.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.csv" in err and "f1" in err and "quarantined" in err and len(err.splitlines()) == 1
    (kept,) = (Path(store) / "quarantine").iterdir()
    assert (kept / "bad.csv").read_bytes() == (tmp_path / "bad.csv").read_bytes()  # the user's bytes, as sent

    rows = _coded(40, 3).drop_columns(["y"])
    for name, write in (("score.csv", _csv), ("score.jsonl", _jsonl)):
        out = tmp_path / f"{name}.out.parquet"
        assert main(["predict", "--store", store, "--data", write(rows, tmp_path / name), "--out", str(out)]) == 0
        assert pq.read_table(out).num_rows == 40

    split = ["split", "--data", first, "--out-train", str(tmp_path / "t.parquet")]
    assert main([*split, "--out-holdout", str(tmp_path / "h.parquet")]) == 0
    assert pq.read_table(tmp_path / "t.parquet").num_rows + pq.read_table(tmp_path / "h.parquet").num_rows == 150

    assert main(["drift", "--store", store, "--data", _jsonl(_coded(60, 4), tmp_path / "d.jsonl"), "--json"]) == 0

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _csv(_coded(80, 5), inbox / "day.csv")
    argv = ["stream", "--store", store, "--inbox", str(inbox), "--once", "--policy", "finetune_new"]
    assert main([*argv, "--set", "epochs=1", "--json"]) == 0
    assert len(Store.open(store).batch_ids()) == 3
